"""Pure tensor maths for alignment losses. Imports torch only."""
