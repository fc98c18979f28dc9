"""Model loading and generic layer discovery."""
