"""FastAV-Eval's analysis commands: calibrate, sweep, report, submit and verify."""
