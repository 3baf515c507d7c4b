package e2e

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// benchReport is what BenchmarkStatefulSetBinding prints.
type benchReport struct {
	nodes, disks, replicas int
	variants               []*benchVariant // no volumes, static, driver, then any others
	provisionerArgs        string
	driverArgs             string
	controlPlaneQPS        int
	logs                   provisionLogs
	load                   [2]string          // runningLoad before and after the rounds
	driverMemory           []map[string]int64 // each node driver's memory after the rounds (driverMemory)
}

// Budgets of the driver's share of provisioning, printed beside the
// figures (never asserted: see BenchmarkStatefulSetBinding).
const (
	budgetCreateVolumeMedian = 20 * time.Millisecond
	budgetCreateVolumeP99    = 100 * time.Millisecond
	budgetAnnotationToPV     = 150 * time.Millisecond
	targetDriverToStatic     = 1.8
)

// header writes a table's header: label in a column of width, then one
// column per variant.
func (r *benchReport) header(w io.Writer, width int, label string) {
	fmt.Fprintf(w, "  %-*s", width, label)
	for _, v := range r.variants {
		fmt.Fprintf(w, " %18s", v.name)
	}
	fmt.Fprintln(w)
}

// print writes the report: settings, round times and ratios, milestones,
// per-replica steps, API requests, CPU, and the steps of the driver's
// variants.
func (r *benchReport) print(w io.Writer) {
	plain, static, driver := r.variants[0], r.variants[1], r.variants[2]
	fmt.Fprintf(w, "\nStatefulSet of %d replicas on %d kubelet-less nodes (%d disks each), %d rounds, variants interleaved in each round.\n",
		r.replicas, r.nodes, r.disks, len(driver.rounds))
	fmt.Fprintf(w, "csi-provisioner: %s\n", r.provisionerArgs)
	fmt.Fprintf(w, "driver: %s\n", r.driverArgs)
	fmt.Fprintf(w, "kube-controller-manager, kube-scheduler: --kube-api-qps=%d --kube-api-burst=%d (the suite's)\n", r.controlPlaneQPS, 2*r.controlPlaneQPS)
	fmt.Fprintf(w, "Machine: %d CPUs; before the rounds %s, after them %s. Noisy figures: compare medians, and rounds of one run.\n",
		runtime.NumCPU(), r.load[0], r.load[1])

	fmt.Fprintf(w, "\nRound times (from the StatefulSet's creation until every pod is scheduled and every claim bound):\n")
	for _, v := range r.variants {
		var ts []string
		for _, rd := range v.rounds {
			ts = append(ts, benchMS(rd.took))
		}
		fmt.Fprintf(w, "  %-18s median %8s   rounds: %s\n", v.name, benchMS(v.median()), strings.Join(ts, " "))
	}
	ratio := func(a, b *benchVariant) float64 { return a.median().Seconds() / b.median().Seconds() }
	fmt.Fprintf(w, "  ratios of the medians: driver/static %.2f (target <= %.1f), driver/no volumes %.2f, static/no volumes %.2f\n",
		ratio(driver, static), targetDriverToStatic, ratio(driver, plain), ratio(static, plain))
	for _, v := range r.variants[3:] {
		fmt.Fprintf(w, "  %s/static %.2f, %s/driver %.2f\n", v.name, ratio(v, static), v.name, ratio(v, driver))
	}

	fmt.Fprintf(w, "\nMilestones: median over rounds of the time from the StatefulSet's creation until the last replica got there\n")
	r.header(w, 22, "milestone")
	for _, m := range milestones {
		fmt.Fprintf(w, "  %-22s", m)
		for _, v := range r.variants {
			var ds []time.Duration
			for _, rd := range v.rounds {
				if d, ok := rd.last[m]; ok {
					ds = append(ds, d)
				}
			}
			f := "-"
			if len(ds) == len(v.rounds) {
				f = benchMS(benchQuantile(ds, 0.5))
			}
			fmt.Fprintf(w, " %18s", f)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  (static: \"PV created\" is the scheduler giving the PV its claimRef)\n")

	fmt.Fprintf(w, "\nPer replica, all rounds: time since the StatefulSet's creation, and the step from the milestone before (median / p99 / max)\n")
	for _, v := range r.variants {
		r.printReplicaSteps(w, v)
	}

	r.printAPI(w)
	r.printCPU(w)
	r.printDriverMemory(w)
	for _, v := range r.variants[2:] {
		r.printDriverSteps(w, v)
		r.printDriverMetrics(w, v)
	}
}

// driverMetricNames are the drivers' metrics each round reads: the time of
// their CSI calls and of their state saves.
var driverMetricNames = []string{
	"localdisk_csi_operation_duration_seconds_sum", "localdisk_csi_operation_duration_seconds_count",
	"localdisk_state_save_duration_seconds_sum", "localdisk_state_save_duration_seconds_count",
	"localdisk_state_save_duration_seconds_bucket",
}

// benchMedianOver is, by key, the median over v's rounds of what of gives
// for the round (0 where a round has no value).
func benchMedianOver(v *benchVariant, of func(round) map[string]float64) map[string]float64 {
	keys := map[string]bool{}
	for _, rd := range v.rounds {
		for k := range of(rd) {
			keys[k] = true
		}
	}
	out := map[string]float64{}
	for k := range keys {
		var ns []float64
		for _, rd := range v.rounds {
			ns = append(ns, of(rd)[k])
		}
		slices.Sort(ns)
		out[k] = ns[(len(ns)-1)/2]
	}
	return out
}

// printDriverMemory prints the node drivers' memory after the rounds:
// median and largest over the drivers, in MiB.
func (r *benchReport) printDriverMemory(w io.Writer) {
	if len(r.driverMemory) == 0 {
		fmt.Fprintf(w, "\nNode drivers' memory: no driver process found\n")
		return
	}
	fmt.Fprintf(w, "\nNode drivers' memory after the rounds, MiB (%d drivers; LocalDisk mirror and events on; built by go build, not static and stripped as in the image): median / largest\n", len(r.driverMemory))
	for _, f := range []string{"VmRSS", "RssAnon", "RssFile", "VmHWM"} {
		var v []float64
		for _, m := range r.driverMemory {
			v = append(v, float64(m[f])/1024)
		}
		slices.Sort(v)
		fmt.Fprintf(w, "  %-8s %6.1f / %6.1f\n", f, v[(len(v)-1)/2], v[len(v)-1])
	}
}

// printCPU prints the CPU time the cluster's programs used per round: on
// a machine with few cores, the rounds compete for it.
func (r *benchReport) printCPU(w io.Writer) {
	medians := make([]map[string]float64, len(r.variants))
	progs := map[string]bool{}
	for i, v := range r.variants {
		medians[i] = benchMedianOver(v, func(rd round) map[string]float64 { return rd.cpu })
		for k := range medians[i] {
			progs[k] = true
		}
	}
	rows := slices.Sorted(maps.Keys(progs))
	last := len(r.variants) - 1
	slices.SortStableFunc(rows, func(a, b string) int { return cmp.Compare(medians[last][b], medians[last][a]) })
	fmt.Fprintf(w, "\nCPU seconds per round (median over rounds; all nodes' processes of a program summed, with the tools they ran; /proc, in 10 ms ticks)\n")
	r.header(w, 28, "program")
	totals := make([]float64, len(r.variants))
	for _, p := range rows {
		fmt.Fprintf(w, "  %-28s", p)
		for i := range r.variants {
			fmt.Fprintf(w, " %18.2f", medians[i][p])
			totals[i] += medians[i][p]
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  %-28s", "total")
	for i := range r.variants {
		fmt.Fprintf(w, " %18.2f", totals[i])
	}
	fmt.Fprintln(w)
}

// printDriverMetrics prints what the drivers' own metrics say of the
// driver's rounds: the CSI calls by method and the state saves.
func (r *benchReport) printDriverMetrics(w io.Writer, v *benchVariant) {
	sum := map[string]float64{}
	for _, rd := range v.rounds {
		for k, n := range rd.drv {
			sum[k] += n
		}
	}
	if len(sum) == 0 {
		return
	}
	fmt.Fprintf(w, "  drivers' own metrics over the driver's rounds (all nodes; means):\n")
	methods := map[string]bool{}
	for k := range sum {
		if name, labels, ok := strings.Cut(k, "{"); ok && name == "localdisk_csi_operation_duration_seconds_count" {
			methods[labels] = true
		}
	}
	for _, labels := range slices.Sorted(maps.Keys(methods)) {
		n, total := sum["localdisk_csi_operation_duration_seconds_count{"+labels], sum["localdisk_csi_operation_duration_seconds_sum{"+labels]
		if n > 0 {
			fmt.Fprintf(w, "    %-70s %5.0f calls, mean %s\n", "{"+labels, n, benchMS(time.Duration(total/n*float64(time.Second))))
		}
	}
	var saves, saveSecs, fast float64
	for k, n := range sum {
		switch {
		case strings.HasPrefix(k, "localdisk_state_save_duration_seconds_count"):
			saves += n
		case strings.HasPrefix(k, "localdisk_state_save_duration_seconds_sum"):
			saveSecs += n
		case strings.HasPrefix(k, "localdisk_state_save_duration_seconds_bucket") && strings.Contains(k, `le="0.025"`):
			fast += n
		}
	}
	if saves > 0 {
		fmt.Fprintf(w, "    state saves (both copies written, each fsync'd and renamed; one per change, under the node's inventory lock): %.0f, mean %s, %.0f%% over 25ms\n",
			saves, benchMS(time.Duration(saveSecs/saves*float64(time.Second))), 100*(saves-fast)/saves)
	}
}

// median is the variant's median round time.
func (v *benchVariant) median() time.Duration {
	var ds []time.Duration
	for _, rd := range v.rounds {
		ds = append(ds, rd.took)
	}
	return benchQuantile(ds, 0.5)
}

// reachedByAll is the milestones every replica of every round of v
// reached, in order.
func reachedByAll(v *benchVariant) []string {
	var out []string
	for _, m := range milestones {
		all := true
		for _, rd := range v.rounds {
			for _, times := range rd.replicas {
				_, ok := times[m]
				all = all && ok
			}
			all = all && len(rd.replicas) > 0
		}
		if all {
			out = append(out, m)
		}
	}
	return out
}

func (r *benchReport) printReplicaSteps(w io.Writer, v *benchVariant) {
	reached := reachedByAll(v)
	fmt.Fprintf(w, "  %s:\n", v.name)
	fmt.Fprintf(w, "    %-22s %-28s %s\n", "milestone", "since creation", "step")
	for i, m := range reached {
		var since, step []time.Duration
		for _, rd := range v.rounds {
			for _, times := range rd.replicas {
				since = append(since, times[m].Sub(rd.created))
				if i > 0 {
					step = append(step, times[m].Sub(times[reached[i-1]]))
				} else {
					step = append(step, times[m].Sub(rd.created))
				}
			}
		}
		from := "creation"
		if i > 0 {
			from = reached[i-1]
		}
		fmt.Fprintf(w, "    %-22s %-28s %s  (from %s)\n", m, benchSpread(since), benchSpread(step), from)
	}
}

// benchSpread is "median / p99 / max" of ds.
func benchSpread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	return fmt.Sprintf("%s / %s / %s", benchMS(benchQuantile(ds, 0.5)), benchMS(benchQuantile(ds, 0.99)), benchMS(benchQuantile(ds, 1)))
}

// alwaysShown are the resources whose API requests are listed however few.
var alwaysShown = []string{"persistentvolumeclaims", "persistentvolumes", "pods", "events", "csistoragecapacities", "leases"}

func (r *benchReport) printAPI(w io.Writer) {
	medians := make([]map[string]float64, len(r.variants))
	keys := map[string]bool{}
	for i, v := range r.variants {
		medians[i] = benchMedianOver(v, func(rd round) map[string]float64 { return rd.api })
		for k := range medians[i] {
			keys[k] = true
		}
	}
	var rows []string
	for k := range keys {
		shown := slices.ContainsFunc(alwaysShown, func(res string) bool { return apiResource(k) == res })
		for i := range r.variants {
			shown = shown || medians[i][k] >= 5
		}
		if shown && medians[len(medians)-1][k]+medians[1][k]+medians[0][k] > 0 {
			rows = append(rows, k)
		}
	}
	last := len(r.variants) - 1
	slices.SortFunc(rows, func(a, b string) int {
		if c := cmp.Compare(medians[last][b], medians[last][a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	fmt.Fprintf(w, "\nAPI requests per round (apiserver_request_total, summed over codes; median over rounds), rows with >= 5 in a variant and all of %s\n",
		strings.Join(alwaysShown, ", "))
	r.header(w, 56, "request")
	for _, k := range rows {
		fmt.Fprintf(w, "  %-56s", k)
		for i := range r.variants {
			fmt.Fprintf(w, " %18.0f", medians[i][k])
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  %-56s", "total (all rows, shown or not)")
	for i := range r.variants {
		total := 0.0
		for _, n := range medians[i] {
			total += n
		}
		fmt.Fprintf(w, " %18.0f", total)
	}
	fmt.Fprintln(w)
	for _, res := range alwaysShown {
		if !slices.ContainsFunc(rows, func(k string) bool { return apiResource(k) == res }) {
			fmt.Fprintf(w, "  (no request on %s)\n", res)
		}
	}
	fmt.Fprintf(w, "  (the round's window: from just before the StatefulSet is applied until the informers saw the end; kubectl apply's own requests included, WATCHes counted when they end)\n")
}

// apiResource is the resource of an apiRequests key ("VERB resource/sub [group]").
func apiResource(key string) string {
	f := strings.Fields(key)
	if len(f) < 2 {
		return ""
	}
	res, _, _ := strings.Cut(f[1], "/")
	return res
}

// driverStep is one step of provisioning a replica's volume: the time
// from one event to the next.
type driverStep struct {
	label, source string
	from, to      string
	budget        string
}

// The events of a replica's provisioning, in the order they happen; the
// first and the last three are the bench's informers', the others come
// from the logs of the node's csi-provisioner and driver.
const (
	evSelected     = "node selected"
	evAnnotated    = "provisioner annotated"
	evProvisioning = "provisioning started"
	evCVStart      = "CreateVolume started"
	evCVDone       = "CreateVolume done"
	evProvisioned  = "provision returned"
	evPV           = "PV created"
	evBound        = "claim bound"
	evScheduled    = "pod scheduled"
)

var driverSteps = []driverStep{
	{"node selected -> provisioner annotated", "PV controller", evSelected, evAnnotated, ""},
	{"annotated -> provisioning started", "csi-provisioner: its Provisioning event", evAnnotated, evProvisioning, ""},
	{"provisioning -> CreateVolume start", "csi-provisioner", evProvisioning, evCVStart, ""},
	{"CreateVolume", "driver log: duration", evCVStart, evCVDone, fmt.Sprintf("budget median <= %v, p99 <= %v", budgetCreateVolumeMedian, budgetCreateVolumeP99)},
	{"CreateVolume done -> provision returned", "csi-provisioner", evCVDone, evProvisioned, ""},
	{"provision returned -> PV created", "csi-provisioner: PV create (queue, client limit)", evProvisioned, evPV, ""},
	{"PV created -> claim bound", "PV controller", evPV, evBound, ""},
	{"claim bound -> pod scheduled", "scheduler: 1 s volume binding poll, pod binding", evBound, evScheduled, ""},
	{"= annotated -> PV created", "", evAnnotated, evPV, fmt.Sprintf("budget median <= %v", budgetAnnotationToPV)},
	{"= node selected -> claim bound", "", evSelected, evBound, ""},
	{"= node selected -> pod scheduled", "", evSelected, evScheduled, ""},
}

// printDriverSteps splits, per replica of the driver's rounds, the time
// from the selected node to the bound claim into steps.
func (r *benchReport) printDriverSteps(w io.Writer, v *benchVariant) {
	steps := make([][]time.Duration, len(driverSteps))
	var cv []time.Duration
	calls, failed, missing := 0, 0, 0
	for _, rd := range v.rounds {
		for rep, times := range rd.replicas {
			c := rd.claims[rep]
			ev := map[string]time.Time{}
			for _, m := range []string{evSelected, evAnnotated, evPV, evBound, evScheduled} {
				if t, ok := times[m]; ok {
					ev[m] = t
				}
			}
			// csi-provisioner takes the claim once it has both the selected
			// node and the annotation, whichever came last.
			if a, ok := ev[evAnnotated]; ok && a.Before(ev[evSelected]) {
				ev[evAnnotated] = ev[evSelected]
			}
			if t, ok := r.logs.provisioning[c.name]; ok {
				ev[evProvisioning] = t
			}
			if t, ok := r.logs.provisioned[c.name]; ok {
				ev[evProvisioned] = t
			}
			if call, ok := r.logs.volumes["pvc-"+c.uid]; ok {
				ev[evCVStart], calls, failed = call.start, calls+call.calls, failed+call.failed
				if !call.done.IsZero() {
					ev[evCVDone] = call.done
					cv = append(cv, call.duration)
				}
			}
			for i, s := range driverSteps {
				from, ok1 := ev[s.from]
				to, ok2 := ev[s.to]
				if !ok1 || !ok2 {
					missing++
					continue
				}
				steps[i] = append(steps[i], to.Sub(from))
			}
		}
	}
	fmt.Fprintf(w, "\n%s: the steps from the selected node to the bound claim, per replica of all rounds\n", strings.ToUpper(v.name[:1])+v.name[1:])
	fmt.Fprintf(w, "  %-42s %9s %9s %9s %5s  %s\n", "step", "median", "p99", "max", "n", "by / budget")
	for i, s := range driverSteps {
		ds := steps[i]
		if len(ds) == 0 {
			fmt.Fprintf(w, "  %-42s %9s %9s %9s %5d  %s\n", s.label, "-", "-", "-", 0, s.source)
			continue
		}
		note := s.source
		if s.budget != "" {
			note = strings.TrimPrefix(note+"; "+s.budget, "; ")
		}
		fmt.Fprintf(w, "  %-42s %9s %9s %9s %5d  %s\n", s.label, benchMS(benchQuantile(ds, 0.5)), benchMS(benchQuantile(ds, 0.99)), benchMS(benchQuantile(ds, 1)), len(ds), note)
	}
	if len(cv) > 0 {
		fmt.Fprintf(w, "  driver CreateVolume: %d calls (%d failed), successful ones median %s (budget <= %v), p99 %s (budget <= %v), max %s\n",
			calls, failed, benchUS(benchQuantile(cv, 0.5)), budgetCreateVolumeMedian, benchUS(benchQuantile(cv, 0.99)), budgetCreateVolumeP99, benchUS(benchQuantile(cv, 1)))
	}
	var waits []time.Duration
	for at, ds := range r.logs.throttled {
		for _, rd := range v.rounds {
			if !at.Before(rd.created) && !at.After(rd.created.Add(rd.took)) {
				waits = append(waits, ds...)
			}
		}
	}
	if strings.Contains(r.provisionerArgs, "--v=") && !regexp.MustCompile(`--v=[0-2]\b`).MatchString(r.provisionerArgs) {
		var total time.Duration
		for _, d := range waits {
			total += d
		}
		fmt.Fprintf(w, "  csi-provisioner client-side throttling during the rounds: %d requests waited >= 50ms, %s in all, max %s\n",
			len(waits), benchMS(total), benchMS(benchQuantile(waits, 1)))
	} else {
		fmt.Fprintf(w, "  (csi-provisioner logs its client-side throttling waits at --v=3 and above only)\n")
	}
	if steps[8] != nil {
		fmt.Fprintf(w, "  provisioner annotation -> PV created: median %s (budget <= %v)\n", benchMS(benchQuantile(steps[8], 0.5)), budgetAnnotationToPV)
	}
	fmt.Fprintf(w, "  (informer times are when the bench saw the change, log times when the process logged it: steps across the two carry the watch delay, a few ms, more under load")
	if missing > 0 {
		fmt.Fprintf(w, "; %d step figures missing an end", missing)
	}
	fmt.Fprintf(w, ")\n")
}

// benchQuantile is the q-quantile of ds by nearest rank (q = 0.5: the median,
// the lower middle one of an even count; q = 1: the maximum).
func benchQuantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// benchMS and benchUS print a duration to the millisecond and to 10 µs.
func benchMS(d time.Duration) string { return d.Round(time.Millisecond).String() }
func benchUS(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }

// apiRequests is the apiserver's apiserver_request_total, summed over
// codes and the other labels, by "VERB resource[/subresource] [group]";
// requests for non-resource URLs (the reading of /metrics among them)
// are left out.
func (e *env) apiRequests(ctx context.Context) map[string]float64 {
	e.t.Helper()
	out, err := e.cp.Kubectl(ctx, "", "get", "--raw", "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	return parseRequestTotals(out)
}

var benchMetricLabel = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

func parseRequestTotals(metrics string) map[string]float64 {
	totals := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(metrics))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "apiserver_request_total{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(line, "} ")
		if !ok {
			continue
		}
		n, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			continue
		}
		l := map[string]string{}
		for _, m := range benchMetricLabel.FindAllStringSubmatch(labels, -1) {
			l[m[1]] = m[2]
		}
		if l["resource"] == "" {
			continue
		}
		key := l["verb"] + " " + l["resource"]
		if l["subresource"] != "" {
			key += "/" + l["subresource"]
		}
		if l["group"] != "" {
			key += " [" + l["group"] + "]"
		}
		totals[key] += n
	}
	return totals
}

// provisionLogs are the times the nodes' logs give of each volume's
// provisioning.
type provisionLogs struct {
	// volumes are the driver's CreateVolume calls, by volume name.
	volumes map[string]*benchCreateVolume
	// provisioning and provisioned are, by claim name, when the claim's
	// csi-provisioner logged its first Provisioning event and the first
	// "successfully created PV" (its Provision call returned).
	provisioning, provisioned map[string]time.Time
	// throttled are the waits of csi-provisioner's requests for its
	// client-side rate limit, of 50 ms or more (logged at --v=3 and
	// above), by the time they were logged.
	throttled map[time.Time][]time.Duration
}

type benchCreateVolume struct {
	start    time.Time // of the first call
	done     time.Time // end of the first successful call
	duration time.Duration
	calls    int
	failed   int
}

var (
	benchKlogTime  = regexp.MustCompile(`^[IWE](\d{4} \d{2}:\d{2}:\d{2}\.\d{6})`)
	cvLine         = regexp.MustCompile(`"GRPC (done|failed)".*method="/csi.v1.Controller/CreateVolume".*?\\"name\\":\\"([^\\"]+)\\".* duration="([^"]+)"`)
	provisioningEv = regexp.MustCompile(`"Event occurred" object="[^/"]+/([^"]+)".* reason="Provisioning"`)
	provisionedPV  = regexp.MustCompile(`successfully created PV \S+ for PVC (\S+) `)
	throttledWait  = regexp.MustCompile(`"Waited before sending request" delay="([^"]+)" reason="client-side throttling`)
)

// provisionLogs reads every node's driver and csi-provisioner log.
func (e *env) provisionLogs() provisionLogs {
	e.t.Helper()
	l := provisionLogs{volumes: map[string]*benchCreateVolume{}, provisioning: map[string]time.Time{}, provisioned: map[string]time.Time{},
		throttled: map[time.Time][]time.Duration{}}
	year := time.Now().Year()
	each := func(path string, line func(at time.Time, text string)) {
		b, err := os.ReadFile(path)
		if err != nil {
			e.t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			m := benchKlogTime.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			at, err := time.ParseInLocation("2006 0102 15:04:05.000000", strconv.Itoa(year)+" "+m[1], time.Local)
			if err != nil {
				continue
			}
			line(at, sc.Text())
		}
	}
	first := func(m map[string]time.Time, k string, at time.Time) {
		if t, ok := m[k]; !ok || at.Before(t) {
			m[k] = at
		}
	}
	for _, n := range e.fakes {
		each(n.Log("driver"), func(at time.Time, text string) {
			m := cvLine.FindStringSubmatch(text)
			if m == nil {
				return
			}
			d, err := time.ParseDuration(m[3])
			if err != nil {
				return
			}
			c := l.volumes[m[2]]
			if c == nil {
				c = &benchCreateVolume{}
				l.volumes[m[2]] = c
			}
			c.calls++
			if start := at.Add(-d); c.start.IsZero() || start.Before(c.start) {
				c.start = start
			}
			if m[1] == "failed" {
				c.failed++
			} else if c.done.IsZero() {
				c.done, c.duration = at, d
			}
		})
		each(n.Log("csi-provisioner"), func(at time.Time, text string) {
			if m := provisioningEv.FindStringSubmatch(text); m != nil {
				first(l.provisioning, m[1], at)
			}
			if m := provisionedPV.FindStringSubmatch(text); m != nil {
				first(l.provisioned, m[1], at)
			}
			if m := throttledWait.FindStringSubmatch(text); m != nil {
				if d, err := time.ParseDuration(m[1]); err == nil {
					l.throttled[at] = append(l.throttled[at], d)
				}
			}
		})
	}
	return l
}

// argsOf is the command line of the first node's process (driver,
// csi-provisioner), as its log begins, without the harness's paths.
func (e *env) argsOf(process string) string {
	e.t.Helper()
	b, err := os.ReadFile(e.fakes[0].Log(process))
	if err != nil {
		e.t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	var args []string
	for _, a := range strings.Fields(first)[2:] {
		// Paths and addresses of the harness tell nothing about the settings.
		if !benchHasPrefix(a, []string{"--csi-address=", "--kubeconfig=", "--endpoint=", "--state-dir=", "--devices=", "--metrics-address=", "--node-id="}) {
			args = append(args, a)
		}
	}
	return strings.Join(args, " ")
}
