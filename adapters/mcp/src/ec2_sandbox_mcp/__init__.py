"""ec2-sandbox tools for mcp (being written)."""
