"""The ranking browser: pick a class, page through the validation images sorted by its score.

`gui.model` (ranking, paging, precision numbers) and `gui.thumbnails` (decoding, caching,
tile drawing) know nothing of PySimpleGUI and are tested without a screen; `gui.app` is the
thin window and event loop.
"""
