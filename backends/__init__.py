"""Code-generation backends (installed as ``archc.backends``), one subpackage per target."""
