"""The ``tug`` command line client of tugd."""
