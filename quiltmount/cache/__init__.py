"""The persistent, content-addressed block cache shared by every mount of the user (`disk.py`) and the keys
it stores blocks under (`keys.py`)."""
