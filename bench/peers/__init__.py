"""Other implementations of the tutorial's nets, written for bench.run to time against charlm."""
