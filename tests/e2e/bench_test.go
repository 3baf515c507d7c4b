package e2e

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

var (
	benchNodes  = flag.Int("bench-nodes", 10, "kubelet-less nodes of BenchmarkStatefulSetBinding")
	benchDisks  = flag.Int("bench-disks", 5, "disks per node of BenchmarkStatefulSetBinding")
	benchRounds = flag.Int("bench-rounds", 3, "rounds of BenchmarkStatefulSetBinding; the medians are reported")
	benchQPS    = flag.Int("bench-api-qps", 0, "--kube-api-qps of kube-controller-manager and kube-scheduler (burst twice that); 0: the suite's default")
)

// BenchmarkStatefulSetBinding measures the time from creating a StatefulSet
// of K replicas, K the number of disks in the cluster, to all K claims
// bound and all pods scheduled, against the same StatefulSet without
// volumes, and reports the ratio (capacity tracking's price; the target is
// at most 1.5).
func BenchmarkStatefulSetBinding(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	topo := topology{apiQPS: *benchQPS}
	for i := 0; i < *benchNodes; i++ {
		topo.fake = append(topo.fake, disks(*benchDisks, ssd))
	}
	k := *benchNodes * *benchDisks
	e := startCluster(ctx, b, topo)
	e.apply(ctx, "../../examples/storageclasses/ssd-ext4.yaml")
	var plain, withVolumes []round
	for i := 0; i < *benchRounds; i++ {
		plain = append(plain, e.timeStatefulSet(ctx, fmt.Sprintf("plain%d", i), "", k))
		withVolumes = append(withVolumes, e.timeStatefulSet(ctx, fmt.Sprintf("vol%d", i), "localdisk-ssd", k))
	}
	byTime := func(a, b round) int { return cmp.Compare(a.took, b.took) }
	slices.SortFunc(plain, byTime)
	slices.SortFunc(withVolumes, byTime)
	pr, vr := plain[len(plain)/2], withVolumes[len(withVolumes)/2]
	p, v := pr.took, vr.took
	ratio := v.Seconds() / p.Seconds()
	fmt.Printf("StatefulSet of %d replicas on %d nodes: without volumes %v, with local disks %v (median of %d), ratio %.2f (target <= 1.5)\n",
		k, *benchNodes, p.Round(time.Millisecond), v.Round(time.Millisecond), len(plain), ratio)
	fmt.Printf("  %-16s %16s %16s   (median round; time from creation until the last replica got there)\n", "step", "without volumes", "with local disks")
	for _, m := range milestones {
		fmt.Printf("  %-16s %16s %16s\n", m, figure(pr.last, m), figure(vr.last, m))
	}
	cv := e.createVolumeDurations()
	slices.Sort(cv)
	if len(cv) > 0 {
		fmt.Printf("  driver CreateVolume: %d calls, median %v, max %v\n", len(cv), cv[len(cv)/2].Round(time.Microsecond), cv[len(cv)-1].Round(time.Microsecond))
	}
	b.ReportMetric(p.Seconds(), "s-without-volumes")
	b.ReportMetric(v.Seconds(), "s-with-volumes")
	b.ReportMetric(ratio, "ratio")
}

func figure(last map[string]time.Duration, m string) string {
	d, ok := last[m]
	if !ok {
		return "-"
	}
	return d.Round(time.Millisecond).String()
}

// milestones are the steps of one StatefulSet round, each the time from
// creating the StatefulSet until every replica reached it. A round without
// volumes has only "pod created" and "pod scheduled".
var milestones = []string{
	"claim created", // StatefulSet controller
	"pod created",   // StatefulSet controller
	"node selected", // scheduler: selected-node annotation on the claim
	"PV created",    // csi-provisioner and the driver's CreateVolume
	"claim bound",   // PV controller
	"pod scheduled", // scheduler, after its volume binding wait
}

// round is what timeStatefulSet measured.
type round struct {
	took time.Duration
	// last holds, per milestone, when the last replica reached it.
	last map[string]time.Duration
}

// timeStatefulSet creates a StatefulSet of k replicas (claiming from class,
// or without volumes when class is ""), returns the time until all pods are
// scheduled and all claims bound, with the milestones on the way, then
// removes it and waits until every disk is free again.
func (e *env) timeStatefulSet(ctx context.Context, name, class string, k int) round {
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	p := e.follow(fctx, name)
	start := time.Now()
	e.apply(ctx, statefulSet(name, class, k, "512Mi"))
	e.waitFor(ctx, name+" scheduled", func() error {
		c := e.claimsOf(ctx, name)
		if c.scheduled != k || (class != "" && len(c.bound) != k) {
			return fmt.Errorf("%d scheduled, %d bound of %d", c.scheduled, len(c.bound), k)
		}
		return nil
	})
	res := round{took: time.Since(start), last: map[string]time.Duration{}}
	if class != "" {
		e.checkPlacement(e.claimsOf(ctx, name))
	}
	// The informers trail the API, more so on a loaded machine: wait until
	// they saw the end (at most 30 s; milestones they missed get no figure).
	for caughtUp := time.Now().Add(30 * time.Second); time.Now().Before(caughtUp); time.Sleep(200 * time.Millisecond) {
		if p.count("pod scheduled") == k && (class == "" || p.count("claim bound") == k) {
			break
		}
	}
	stop()
	// Time runs from the StatefulSet's arrival (not counting kubectl's
	// start) to the last milestone (not counting waitFor's polling), both
	// as the informers saw them.
	p.mu.Lock()
	for m, replicas := range p.reached {
		if len(replicas) != k || p.created.IsZero() {
			continue // not every replica seen: no figure rather than a wrong one
		}
		for _, at := range replicas {
			res.last[m] = max(res.last[m], at.Sub(p.created))
		}
	}
	p.mu.Unlock()
	if d, ok := res.last["pod scheduled"]; ok && (class == "" || res.last["claim bound"] > 0) {
		res.took = max(d, res.last["claim bound"])
	}

	e.kubectl(ctx, "", "delete", "statefulset", "-n", "default", name, "--wait=false")
	e.forceDeletePods(ctx, "-l", "app="+name)
	if class != "" {
		e.kubectl(ctx, "", "delete", "pvc", "-n", "default", "--all", "--wait=false")
	}
	e.waitFor(ctx, name+" gone, disks free", func() error {
		if pods := e.list(ctx, "pods", "-n", "default"); len(pods) > 0 {
			return fmt.Errorf("%d pods left", len(pods))
		}
		if pvs := e.list(ctx, "pv"); len(pvs) > 0 {
			return fmt.Errorf("%d PVs left", len(pvs))
		}
		for _, n := range e.fakes {
			if got := e.capacity(ctx, n.Name); got < int64(*benchDisks)*(gib-4<<20) {
				return fmt.Errorf("%s reports %d bytes free", n.Name, got)
			}
		}
		return nil
	})
	return res
}

// progress holds when each replica of one StatefulSet (by its ordinal)
// first reached each milestone, and when the StatefulSet arrived.
type progress struct {
	mu      sync.Mutex
	created time.Time
	reached map[string]map[string]time.Time
}

func (p *progress) mark(m, replica string) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reached[m] == nil {
		p.reached[m] = map[string]time.Time{}
	}
	if _, ok := p.reached[m][replica]; !ok {
		p.reached[m][replica] = now
	}
}

func (p *progress) count(m string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.reached[m])
}

// follow records, from informers until ctx ends, the progress of the
// StatefulSet name. (Informers rather than kubectl watches, which end for
// good on a watch error and fall behind on a loaded machine.)
func (e *env) follow(ctx context.Context, name string) *progress {
	e.t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", e.cp.Kubeconfig)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	p := &progress{reached: map[string]map[string]time.Time{}}
	claimPrefix, podPrefix := "data-"+name+"-", name+"-"
	factory := informers.NewSharedInformerFactory(client, 0)
	on := func(inf cache.SharedIndexInformer, seen func(obj any)) {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    seen,
			UpdateFunc: func(_, obj any) { seen(obj) },
		}); err != nil {
			e.t.Fatal(err)
		}
	}
	on(factory.Core().V1().PersistentVolumeClaims().Informer(), func(obj any) {
		c := obj.(*corev1.PersistentVolumeClaim)
		if r, ok := strings.CutPrefix(c.Name, claimPrefix); ok {
			p.mark("claim created", r)
			if c.Annotations["volume.kubernetes.io/selected-node"] != "" {
				p.mark("node selected", r)
			}
			if c.Status.Phase == corev1.ClaimBound {
				p.mark("claim bound", r)
			}
		}
	})
	on(factory.Core().V1().PersistentVolumes().Informer(), func(obj any) {
		if ref := obj.(*corev1.PersistentVolume).Spec.ClaimRef; ref != nil {
			if r, ok := strings.CutPrefix(ref.Name, claimPrefix); ok {
				p.mark("PV created", r)
			}
		}
	})
	on(factory.Core().V1().Pods().Informer(), func(obj any) {
		pod := obj.(*corev1.Pod)
		if r, ok := strings.CutPrefix(pod.Name, podPrefix); ok {
			p.mark("pod created", r)
			if pod.Spec.NodeName != "" {
				p.mark("pod scheduled", r)
			}
		}
	})
	on(factory.Apps().V1().StatefulSets().Informer(), func(obj any) {
		if obj.(*appsv1.StatefulSet).Name == name {
			p.mu.Lock()
			if p.created.IsZero() {
				p.created = time.Now()
			}
			p.mu.Unlock()
		}
	})
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			e.t.Fatalf("informer for %v not synced", typ)
		}
	}
	e.t.Cleanup(factory.Shutdown)
	return p
}

// createVolumeDurations reads the duration of every CreateVolume call from
// the drivers' logs: the driver's own share of provisioning.
func (e *env) createVolumeDurations() []time.Duration {
	var out []time.Duration
	re := regexp.MustCompile(`method="/csi.v1.Controller/CreateVolume".* duration="([^"]+)"`)
	for _, n := range e.fakes {
		b, err := os.ReadFile(n.Log("driver"))
		if err != nil {
			e.t.Fatal(err)
		}
		for _, m := range re.FindAllSubmatch(b, -1) {
			if d, err := time.ParseDuration(string(m[1])); err == nil {
				out = append(out, d)
			}
		}
	}
	return out
}
