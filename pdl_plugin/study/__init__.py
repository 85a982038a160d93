"""A study: several PDL settings (arms) trained on the same data and seeds, evaluated alike, compared in pairs."""
