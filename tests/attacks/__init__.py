"""The attack suite: hostile programs and inputs, each test named after the attack it makes."""
