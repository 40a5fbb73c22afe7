"""The harness that tests and benchmarks share: real daemons, real images, real HTTP."""
