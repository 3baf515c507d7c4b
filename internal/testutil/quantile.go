package testutil

import (
	"slices"
	"time"
)

// Quantile is the q-quantile (0..1) of ds, which it sorts; 0 for none.
func Quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}
