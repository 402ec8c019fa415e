"""The offline mini zoo (issue 11): dataset builders, small torchvision architectures, training loops
and the build that produces data/minizoo/. See converters/minizoo/build.py and data/minizoo/README.md.
"""
