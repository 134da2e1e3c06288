"""ec2-sandbox tools for openai-agents (being written)."""
