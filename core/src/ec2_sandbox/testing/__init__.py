"""Test support for ec2-sandbox and for transports and plugins built on it."""
