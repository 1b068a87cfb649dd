"""Atelier's engine: models, caching and generation on Hugging Face diffusers.

Importing this package is cheap; torch and diffusers load when an engine is built. Typical use::

    from pipelines.engine import Engine
    from pipelines.requests import Txt2Img

    result = Engine().generate(Txt2Img(prompt="a red circle", seed=1))
    result.images[0].save("out.png")
"""
