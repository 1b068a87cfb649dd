"""X/Y/Z plot: vary up to three settings of one request and get a labelled grid plus every picture.

``axes`` parses A1111's value syntax ("1-10 (+2)", "1.0-2.0 [3]", comma lists with quotes) and applies
a value to a request; ``grid`` draws the labelled grid with PIL; ``job`` checks a whole plot before
anything runs, runs it as one job in the engine's queue (``submit_plot``/``plot``), saving every cell
with its own infotext and the grid with one that names the axes, and reads A1111's REST
``script_name``/``script_args`` (``from_a1111_script``). Importing this package stays light (no torch).
"""
