"""The Node Controller: starts, inspects, stops and cleans up VMs on one host."""
