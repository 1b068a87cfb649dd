"""Reference images: where they come from and how they guide a generation.

``sources`` finds the picture a job refers to; ``reference`` steers the UNet with it directly
(reference-only attention, AdaIN statistics: no weights needed); ``ip_adapter`` installs an
IP-Adapter through diffusers for one job; ``job`` picks one of them for a request. Each is a
context manager around the pipeline call that leaves the shared model as it found it.
"""
