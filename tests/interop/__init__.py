"""An independent implementation of the channel, checked against the vectors."""
