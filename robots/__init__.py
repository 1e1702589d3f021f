"""robots package."""
