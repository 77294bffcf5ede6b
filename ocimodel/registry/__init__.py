"""The OCI distribution API: references, authentication, pull and push."""
