"""Drivers that measure pricectl; not part of the installed package (see README.md here)."""
