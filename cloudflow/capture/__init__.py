"""What only the saving process runs: capture of code, data files and the bundle's writing."""
