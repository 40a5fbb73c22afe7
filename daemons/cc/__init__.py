"""The Cluster Controller: polls its NCs, schedules instances onto them, and answers
capacity questions for the Cloud Controller."""
