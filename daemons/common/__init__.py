"""What every mallee daemon shares: config, logging, errors, internal RPC, TLS."""
