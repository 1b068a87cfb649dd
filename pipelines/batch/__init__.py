"""Prompts from a list and dataset mode: many pictures as one job in the engine's queue.

``prompt_list`` parses the lines (A1111's "prompts from file or textbox" options), ``dataset`` the
classes and the image-folder layout, ``job`` runs either through ``Engine.submit_work``.
"""
