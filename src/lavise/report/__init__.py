"""Everything a person looks at: figures and pages built from lavise results."""
