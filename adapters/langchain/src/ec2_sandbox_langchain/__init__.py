"""ec2-sandbox tools for langchain (being written)."""
