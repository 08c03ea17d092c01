"""What loading and serving import: reading, binding and running a bundle. Never imports capture."""
