"""mallee: an EC2-compatible IaaS cloud for the machines a site already has."""
