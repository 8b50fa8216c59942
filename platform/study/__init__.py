"""Loading a study: the YAML file, the schema, component checks, sweep rules and expansion into trial
dicts.
"""
