"""Dataset readers in the real formats, transforms, and writers of the generated sample datasets."""
