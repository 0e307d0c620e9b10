"""Offline model tooling: conversion of training checkpoints and writers of the served formats.

Not part of the .mar: the handler package (`handlers/`) only reads these formats.
"""
