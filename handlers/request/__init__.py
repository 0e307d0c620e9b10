"""The request path: payload -> decoded pixels -> the recipe's tensor; answers and errors."""
