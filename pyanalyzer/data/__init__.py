"""Datasets: image folders, Broden-format concept datasets and synthetic concept scenes.

:mod:`pyanalyzer.data.synthetic` draws seeded scenes with exact shape, colour and texture masks
(numpy only, no torch).
"""
