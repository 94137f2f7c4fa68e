package dispatcher

// SetStatusFlushMax changes the most statuses one flush writes until the
// returned function restores it. Not for parallel tests.
func SetStatusFlushMax(n int) (restore func()) {
	old := statusFlushMax
	statusFlushMax = n
	return func() { statusFlushMax = old }
}
