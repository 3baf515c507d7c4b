package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// Snapshotter lists the node's disks as they are now.
type Snapshotter interface {
	View() []inventory.DiskView
}

// Statuses are the values of the status label of localdisk_disks; every
// one is exported (0 when no disk has it), so that alerts on a status see
// a series.
var Statuses = []string{string(state.Free), string(state.Allocated), string(state.Cleaning), string(state.Failed), string(state.Excluded), inventory.StatusMissing, inventory.StatusDamaged}

var (
	descDisks = prometheus.NewDesc(Namespace+"_disks", "Disks the node driver knows, by status, media and ECS category.",
		[]string{"status", "media", "category"}, nil)
	descCordoned = prometheus.NewDesc(Namespace+"_cordoned_disks", "Disks an operator cordoned (spec.cordoned of the LocalDisk), by media and category.",
		[]string{"media", "category"}, nil)
	descTotal = prometheus.NewDesc(Namespace+"_total_bytes", "Bytes of the disks the driver manages (all but excluded ones), by media and category.",
		[]string{"media", "category"}, nil)
	descFree = prometheus.NewDesc(Namespace+"_free_bytes", "Bytes of the disks that can be allocated now (free, present, not cordoned), by media and category.",
		[]string{"media", "category"}, nil)
	descCleanupDone = prometheus.NewDesc(Namespace+"_cleanup_done_bytes", "Bytes a zero or shred cleanup has written and synced so far (all passes), per disk.",
		[]string{"disk", "policy"}, nil)
	descCleanupTotal = prometheus.NewDesc(Namespace+"_cleanup_total_bytes", "Bytes a zero or shred cleanup writes in all (all passes), per disk.",
		[]string{"disk", "policy"}, nil)
	descOldest = prometheus.NewDesc(Namespace+"_oldest_disk_in_status_seconds", "Age of the oldest status change among the disks in a status (cleaning, failed); 0 when none is.",
		[]string{"status"}, nil)
)

// diskCollector turns the inventory's view into metrics at every scrape.
type diskCollector struct {
	snap Snapshotter
	now  func() time.Time
}

func (c *diskCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDisks, descCordoned, descTotal, descFree, descCleanupDone, descCleanupTotal, descOldest} {
		ch <- d
	}
}

type mediaKey struct{ media, category string }

func (c *diskCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[mediaKey]map[string]int{}
	cordoned, total, free := map[mediaKey]int{}, map[mediaKey]int64{}, map[mediaKey]int64{}
	oldest := map[string]time.Time{}
	for _, d := range c.snap.View() {
		k := mediaKey{d.Media, d.Category}
		if counts[k] == nil {
			counts[k] = map[string]int{}
		}
		counts[k][d.Shown()]++
		if d.Cordoned {
			cordoned[k]++
		}
		if d.Managed && d.Status != string(state.Excluded) {
			total[k] += d.SizeBytes
		}
		if d.Status == string(state.Free) && !d.Missing && !d.Cordoned && d.Damaged == "" {
			free[k] += d.SizeBytes
		}
		if d.Status == string(state.Cleaning) || d.Status == string(state.Failed) {
			if t, ok := oldest[d.Status]; !ok || d.UpdatedAt.Before(t) {
				oldest[d.Status] = d.UpdatedAt
			}
			if done, all, ok := d.CleanupBytes(); ok {
				ch <- prometheus.MustNewConstMetric(descCleanupDone, prometheus.GaugeValue, float64(done), d.ID, d.CleanupPolicy)
				ch <- prometheus.MustNewConstMetric(descCleanupTotal, prometheus.GaugeValue, float64(all), d.ID, d.CleanupPolicy)
			}
		}
	}
	for k, byStatus := range counts {
		for _, s := range Statuses {
			ch <- prometheus.MustNewConstMetric(descDisks, prometheus.GaugeValue, float64(byStatus[s]), s, k.media, k.category)
		}
		ch <- prometheus.MustNewConstMetric(descCordoned, prometheus.GaugeValue, float64(cordoned[k]), k.media, k.category)
		ch <- prometheus.MustNewConstMetric(descTotal, prometheus.GaugeValue, float64(total[k]), k.media, k.category)
		ch <- prometheus.MustNewConstMetric(descFree, prometheus.GaugeValue, float64(free[k]), k.media, k.category)
	}
	now := c.now()
	for _, s := range []string{string(state.Cleaning), string(state.Failed)} {
		age := 0.0
		if t, ok := oldest[s]; ok {
			age = max(0, now.Sub(t).Seconds())
		}
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, age, s)
	}
}
