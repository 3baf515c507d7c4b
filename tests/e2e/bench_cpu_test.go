package e2e

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// benchClockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat's
// times: 100 on every Linux architecture the suite runs on.
const benchClockTicks = 100

// cpuSeconds is the CPU time (user and system, with that of the children
// waited for) the cluster's processes have used so far, by program: the
// processes whose command line names the cluster's directory (etcd, the
// control plane, every node's driver and csi-provisioner; not the
// short-lived kubectl runs).
func (e *env) cpuSeconds() map[string]float64 {
	out := map[string]float64{}
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range pids {
		cmdline, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), e.dir+"/") {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(p, "stat"))
		if err != nil {
			continue
		}
		// The fields after the command's name in parentheses: utime,
		// stime, cutime and cstime are the 14th to 17th of the whole line
		// (the children's times count those of the tools the driver runs,
		// blkid, wipefs and the like, once it has waited for them).
		i := strings.LastIndexByte(string(stat), ')')
		f := strings.Fields(string(stat)[i+1:])
		if len(f) < 15 {
			continue
		}
		ticks := 0.0
		for _, t := range f[11:15] {
			n, _ := strconv.ParseFloat(t, 64)
			ticks += n
		}
		prog, _, _ := strings.Cut(string(cmdline), "\x00")
		out[filepath.Base(prog)] += ticks / benchClockTicks
	}
	return out
}

// driverMetrics sums, over every node's driver, the samples of its
// /metrics whose names start with one of prefixes, by name and labels
// (without the node label).
func (e *env) driverMetrics(ctx context.Context, prefixes ...string) map[string]float64 {
	e.t.Helper()
	out := map[string]float64{}
	for _, n := range e.fakes {
		url, err := n.MetricsURL()
		if err != nil {
			e.t.Logf("no driver metrics: %v", err)
			return nil
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			e.t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			e.t.Logf("no driver metrics: %v", err)
			return nil
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			if !benchHasPrefix(line, prefixes) {
				continue
			}
			i := strings.LastIndexByte(line, ' ')
			v, err := strconv.ParseFloat(line[i+1:], 64)
			if err != nil {
				continue
			}
			out[dropLabel(line[:i], "node")] += v
		}
		resp.Body.Close()
	}
	return out
}

func benchHasPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// dropLabel removes label name from a sample's name{labels}.
func dropLabel(sample, name string) string {
	open := strings.IndexByte(sample, '{')
	if open < 0 {
		return sample
	}
	var kept []string
	for _, m := range benchMetricLabel.FindAllStringSubmatch(sample[open:], -1) {
		if m[1] != name {
			kept = append(kept, m[0])
		}
	}
	if len(kept) == 0 {
		return sample[:open]
	}
	return sample[:open] + "{" + strings.Join(kept, ",") + "}"
}

// driverMemory is, for each node driver of the cluster (the processes of
// ecs-localdisk-csi whose command line names the cluster's directory), the
// memory fields of its /proc/<pid>/status in KiB: VmRSS, RssAnon, RssFile
// and VmHWM.
func (e *env) driverMemory() []map[string]int64 {
	var out []map[string]int64
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range pids {
		cmdline, err := os.ReadFile(filepath.Join(p, "cmdline"))
		prog, _, _ := strings.Cut(string(cmdline), "\x00")
		if err != nil || filepath.Base(prog) != "ecs-localdisk-csi" || !strings.Contains(string(cmdline), e.dir+"/") {
			continue
		}
		status, err := os.ReadFile(filepath.Join(p, "status"))
		if err != nil {
			continue
		}
		m := map[string]int64{}
		for _, l := range strings.Split(string(status), "\n") {
			k, v, ok := strings.Cut(l, ":")
			if ok && (k == "VmRSS" || k == "RssAnon" || k == "RssFile" || k == "VmHWM") {
				m[k], _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			}
		}
		out = append(out, m)
	}
	return out
}
