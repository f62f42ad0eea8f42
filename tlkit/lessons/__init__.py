"""One module per lesson (`lNN_topic`, named after notebooks/NN_*.ipynb): its experiments, verdicts and plots.

A lesson module imports only the core (`tlkit.*`), never another lesson; the core never imports a lesson
(tests/test_architecture.py checks both).
"""
