"""The analysis methods: one module (or package) a method, each an object built on a model
that ``run``s."""
