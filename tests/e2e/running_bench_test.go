package e2e

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/e2e/cluster"
)

var runningRounds = flag.Int("running-rounds", 5, "measured rounds of BenchmarkPodRunning, one pod of each kind per round (after one round that warms the node up)")

// runningDiskSize is the size of BenchmarkPodRunning's disks.
const runningDiskSize = int64(1) << 40

// runningKind is one kind of pod BenchmarkPodRunning starts: the same
// pod with a claim of class, with an emptyDir, or with no volume at all.
type runningKind struct {
	name     string
	class    string // the claim's StorageClass, "" for no claim
	emptyDir bool
}

// The suite's apiserver runs without the ServiceAccount admission plugin,
// so a pod here has no service-account token volume: the pod without a
// volume never waits for the kubelet's volume manager, which in a usual
// cluster every pod does for its token. The emptyDir pod shows what that
// wait costs by itself, without the driver.
var runningKinds = []runningKind{
	{name: "no volume"},
	{name: "emptyDir", emptyDir: true},
	{name: "ext4", class: "localdisk-ssd"},    // examples/storageclasses/ssd-ext4.yaml as shipped
	{name: "xfs", class: "localdisk-ssd-xfs"}, // the same class with fsType xfs
}

// plugin is what names the kind's volume in the kubelet's log: the
// volume's plugin, "" for no volume.
func (k runningKind) plugin() string {
	switch {
	case k.class != "":
		return cluster.DriverName
	case k.emptyDir:
		return "kubernetes.io/empty-dir"
	}
	return ""
}

// BenchmarkPodRunning measures, on a real node (kubelet, containerd, the
// driver on loop-device disks), the time from "pod scheduled" to "pod
// Running" of a pod with a fresh 1 TiB local disk, ext4 and xfs, against
// the same pod without a volume and with an emptyDir (see runningKinds),
// and prints per kind the median and the maximum, the difference to the
// pod without a volume (the target: at most 1 s more), and where the
// volume pods' time goes. It prints only: timing is never asserted.
//
// "Scheduled" is the moment the suite's pod informer first sees
// spec.nodeName set; "Running" the moment it first sees status.phase
// Running with every container in state running (the kubelet posts both in
// one status update; no pod here has a readiness probe, so Ready comes with
// it). Both are time.Now() at the watch event, so the figure has the
// resolution of watch delivery (milliseconds) rather than the 1 s of the
// API's timestamps, and the delivery delay, the same for both events, mostly
// cancels. The API's own timestamps (the PodScheduled condition's
// lastTransitionTime, the container's startedAt) are printed beside it.
//
// Every volume pod gets a disk nothing was ever written to (the disks are
// sparse files, one per volume pod, and no claim is deleted, so no cleanup
// runs during the rounds). Pods run one at a time and stay until the end.
// The split comes from the kubelet's log (the pod's arrival, the volume
// manager's mount), the driver's log (each gRPC call's end and duration,
// mkfs's duration) and the CRI (sandbox creation and container start, in
// nanoseconds).
func BenchmarkPodRunning(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	rounds := *runningRounds
	// One blank disk per volume pod, the warm-up round's included; the
	// backing files are sparse, so a disk costs only what mkfs writes.
	e := startCluster(ctx, b, topology{real: disks(2*(rounds+1), cluster.DiskSpec{SizeBytes: runningDiskSize})})
	e.apply(ctx, "../../examples/storageclasses/ssd-ext4.yaml")
	e.applyExample(ctx, "../../examples/storageclasses/ssd-ext4.yaml", func(_ string, obj map[string]any) {
		obj["metadata"].(map[string]any)["name"] = "localdisk-ssd-xfs"
		params := obj["parameters"].(map[string]any)
		params["csi.storage.k8s.io/fstype"] = "xfs"
		delete(params, "mkfsOptions") // "-m 0" is mkfs.ext4's
	})
	client := e.runningClient()
	e.waitRunningCapacity(ctx, client)
	w := e.watchRunningPods(ctx, client)

	var samples []*runningSample
	loadBefore := runningLoad()
	for r := 0; r <= rounds; r++ {
		for i := range runningKinds {
			// The order turns every round, so that no kind always
			// follows the same one.
			k := runningKinds[(r+i)%len(runningKinds)]
			samples = append(samples, e.startRunningPod(ctx, client, w, k, r))
		}
	}
	loadAfter := runningLoad()
	e.explainRunning(ctx, client, w, samples)
	load := fmt.Sprintf("before the rounds %s; after them %s", loadBefore, loadAfter)
	for k, m := range printRunning(samples, rounds, load) {
		b.ReportMetric(float64(m.Milliseconds()), "ms-"+strings.ReplaceAll(k, " ", "-"))
	}
}

// runningLoad describes how busy the machine is: the load average of the
// last minute and, where the kernel has it, the share of the last minute
// in which some task waited for a CPU.
func runningLoad() string {
	out := "load average ?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			out = "load average " + f[0]
		}
	}
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "some "); ok {
			for _, f := range strings.Fields(rest) {
				if v, ok := strings.CutPrefix(f, "avg60="); ok {
					out += ", CPU pressure " + v + "% (some, avg60)"
				}
			}
		}
	}
	return out
}

// runningSample is what BenchmarkPodRunning learnt of one pod.
type runningSample struct {
	kind  runningKind
	round int // 0 warms the node up and is not counted
	pod   string
	// scheduled and running are the informer's observations.
	scheduled, running time.Time
	// apiScheduled and apiStarted are the API's timestamps (1 s): the
	// PodScheduled condition's and the container's startedAt.
	apiScheduled, apiStarted           time.Time
	uid, containerID, volumeID, device string

	// From the kubelet's log: the pod's arrival (SyncLoop ADD), the volume
	// manager starting the local disk's mount and its SetUp done.
	kubeletAdd, mountStarted, setUpDone time.Time
	// From the driver's log: each call's start (end minus duration) and end.
	stageStart, stageEnd, publishStart, publishEnd time.Time
	// mkfs within NodeStage, from its "Formatted" line.
	mkfsStart, mkfsEnd time.Time
	failedCalls        int
	// From the CRI: the sandbox's creation and the container's start.
	sandboxCreated, containerStarted time.Time
}

func (s *runningSample) took() time.Duration { return s.running.Sub(s.scheduled) }

// runningClient is a client of the cluster's apiserver as its admin.
func (e *env) runningClient() kubernetes.Interface {
	e.t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", e.cp.Kubeconfig)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return client
}

// waitRunningCapacity waits until the real node's provisioner has
// published capacity for both classes, so that the scheduler places the
// first pods at once.
func (e *env) waitRunningCapacity(ctx context.Context, client kubernetes.Interface) {
	e.t.Helper()
	need := resource.MustParse("1000Gi")
	e.waitFor(ctx, "CSIStorageCapacity of both classes on "+e.real.Name, func() error {
		l, err := client.StorageV1().CSIStorageCapacities(e.cp.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, c := range l.Items {
			if c.NodeTopology != nil && c.NodeTopology.MatchLabels[cluster.TopologyKey] == e.real.Name && c.Capacity != nil && c.Capacity.Cmp(need) >= 0 {
				have[c.StorageClassName] = true
			}
		}
		for _, k := range runningKinds {
			if k.class != "" && !have[k.class] {
				return fmt.Errorf("no capacity of %s yet", k.class)
			}
		}
		return nil
	})
}

// runningWatch holds what the pod informer saw of each pod, by name.
type runningWatch struct {
	mu   sync.Mutex
	seen map[string]*runningSeen
}

// runningSeen is what the informer saw of one pod: when it first saw it
// scheduled and Running.
type runningSeen struct {
	scheduled, running time.Time
	pod                *corev1.Pod // the latest version seen
}

func (w *runningWatch) get(name string) runningSeen {
	w.mu.Lock()
	defer w.mu.Unlock()
	if s, ok := w.seen[name]; ok {
		return *s
	}
	return runningSeen{}
}

// watchRunningPods records, until the benchmark ends, when each pod of
// the default namespace was first seen scheduled and first seen Running.
func (e *env) watchRunningPods(ctx context.Context, client kubernetes.Interface) *runningWatch {
	e.t.Helper()
	w := &runningWatch{seen: map[string]*runningSeen{}}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace("default"))
	inf := factory.Core().V1().Pods().Informer()
	seen := func(obj any) {
		now := time.Now()
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		s := w.seen[pod.Name]
		if s == nil {
			s = &runningSeen{}
			w.seen[pod.Name] = s
		}
		s.pod = pod
		if s.scheduled.IsZero() && pod.Spec.NodeName != "" {
			s.scheduled = now
		}
		if s.running.IsZero() && runningPodStarted(pod) {
			s.running = now
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    seen,
		UpdateFunc: func(_, obj any) { seen(obj) },
	}); err != nil {
		e.t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	factory.Start(wctx.Done())
	for typ, ok := range factory.WaitForCacheSync(wctx.Done()) {
		if !ok {
			e.t.Fatalf("informer for %v not synced", typ)
		}
	}
	e.t.Cleanup(func() { stop(); factory.Shutdown() })
	return w
}

// runningPodStarted is BenchmarkPodRunning's "Running": phase Running and
// every container of the pod in state running.
func runningPodStarted(pod *corev1.Pod) bool {
	if pod.Status.Phase != corev1.PodRunning || len(pod.Status.ContainerStatuses) != len(pod.Spec.Containers) {
		return false
	}
	for _, c := range pod.Status.ContainerStatuses {
		if c.State.Running == nil {
			return false
		}
	}
	return true
}

// startRunningPod creates a pod of kind k (and its claim) and waits until
// the informer saw it Running.
func (e *env) startRunningPod(ctx context.Context, client kubernetes.Interface, w *runningWatch, k runningKind, round int) *runningSample {
	e.t.Helper()
	name := fmt.Sprintf("run-%s-%d", strings.ToLower(strings.ReplaceAll(k.name, " ", "-")), round)
	grace := int64(1)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			HostNetwork:                   true,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "c", Image: cluster.BusyboxImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sleep", "1000000"},
			}},
		},
	}
	if k.class != "" {
		class := k.class
		claim := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				StorageClassName: &class,
				Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1000Gi")}},
			},
		}
		if _, err := client.CoreV1().PersistentVolumeClaims("default").Create(ctx, claim, metav1.CreateOptions{}); err != nil {
			e.t.Fatal(err)
		}
		pod.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name}}}}
	}
	if k.emptyDir {
		pod.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	}
	if len(pod.Spec.Volumes) > 0 {
		pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	}
	if _, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		s := w.get(name)
		if !s.running.IsZero() && !s.scheduled.IsZero() {
			return &runningSample{kind: k, round: round, pod: name, scheduled: s.scheduled, running: s.running}
		}
		select {
		case <-wctx.Done():
			phase := "not seen"
			if s.pod != nil {
				phase = fmt.Sprintf("phase %s, node %q, conditions %v", s.pod.Status.Phase, s.pod.Spec.NodeName, s.pod.Status.Conditions)
			}
			e.t.Fatalf("pod %s not Running after 3m: %s", name, phase)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// explainRunning fills in each sample's API timestamps, the volume's
// identity, the kubelet's and the driver's log lines and the CRI's times.
func (e *env) explainRunning(ctx context.Context, client kubernetes.Interface, w *runningWatch, samples []*runningSample) {
	e.t.Helper()
	for _, s := range samples {
		pod := w.get(s.pod).pod
		s.uid = string(pod.UID)
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodScheduled {
				s.apiScheduled = c.LastTransitionTime.Time
			}
		}
		if cs := pod.Status.ContainerStatuses; len(cs) > 0 {
			s.containerID = strings.TrimPrefix(cs[0].ContainerID, "containerd://")
			if cs[0].State.Running != nil {
				s.apiStarted = cs[0].State.Running.StartedAt.Time
			}
		}
		if s.kind.class == "" {
			continue
		}
		claim, err := client.CoreV1().PersistentVolumeClaims("default").Get(ctx, s.pod, metav1.GetOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
		pv, err := client.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
		if pv.Spec.CSI != nil {
			s.volumeID = pv.Spec.CSI.VolumeHandle
		}
	}
	e.runningKubeletLog(samples)
	e.runningDriverLog(samples)
	e.runningCRI(ctx, samples)
}

// runningKlogHeader is the start of a klog text line: "I0513 12:59:51.123456".
var runningKlogHeader = regexp.MustCompile(`^[IWEF](\d{4} \d{2}:\d{2}:\d{2}\.\d{6}) `)

// runningKlogTime is the time of a klog line, which carries no year: this year's.
func runningKlogTime(l string) (time.Time, bool) {
	m := runningKlogHeader.FindStringSubmatch(l)
	if m == nil {
		return time.Time{}, false
	}
	t, err := time.ParseInLocation("0102 15:04:05.000000", m[1], time.Local)
	if err != nil {
		return time.Time{}, false
	}
	return time.Date(time.Now().Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.Local), true
}

// runningReadLines calls each with every line of a log file.
func (e *env) runningReadLines(file string, each func(l string)) {
	e.t.Helper()
	f, err := os.Open(file)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		each(sc.Text())
	}
	if err := sc.Err(); err != nil {
		e.t.Fatal(err)
	}
}

// runningKubeletLog finds, in the real node's kubelet log (--v=2), when
// the kubelet got each pod and when its volume manager started and
// finished mounting the pod's volume.
func (e *env) runningKubeletLog(samples []*runningSample) {
	e.runningReadLines(e.real.Log("kubelet"), func(l string) {
		at, ok := runningKlogTime(l)
		if !ok {
			return
		}
		for _, s := range samples {
			switch {
			case strings.Contains(l, `"SyncLoop ADD"`) && strings.Contains(l, `"default/`+s.pod+`"`):
				runningFirst(&s.kubeletAdd, at)
			case s.kind.plugin() == "" || !strings.Contains(l, `pod="default/`+s.pod+`"`) || !strings.Contains(l, s.kind.plugin()):
			case strings.Contains(l, "operationExecutor.MountVolume started"):
				runningFirst(&s.mountStarted, at)
			case strings.Contains(l, "MountVolume.SetUp succeeded"):
				runningFirst(&s.setUpDone, at)
			}
		}
	})
}

// runningCall is a driver log line of a gRPC call's end: its method and
// duration.
var runningCall = regexp.MustCompile(`"GRPC (done|failed)".* method="([^"]+)".* duration="([^"]+)"$`)

// runningDriverLog finds, in the real node's driver log, the volume pods'
// NodeStageVolume and NodePublishVolume calls, when mkfs ran within the
// stage, and counts the pods' calls that failed.
func (e *env) runningDriverLog(samples []*runningSample) {
	byVolume := map[string]*runningSample{}
	for _, s := range samples {
		if s.volumeID != "" {
			byVolume[s.volumeID] = s
		}
	}
	// mkfs's end and duration by device: each disk is formatted once.
	type mkfsRun struct {
		end time.Time
		d   time.Duration
	}
	mkfs := map[string]mkfsRun{}
	blank := regexp.MustCompile(`"Formatting blank disk" volumeID="([^"]+)" device="([^"]+)"`)
	formatted := regexp.MustCompile(`"Formatted" device="([^"]+)".* duration="([^"]+)"`)
	e.runningReadLines(e.real.Log("driver"), func(l string) {
		at, ok := runningKlogTime(l)
		if !ok {
			return
		}
		if m := blank.FindStringSubmatch(l); m != nil {
			if s := byVolume[m[1]]; s != nil {
				s.device = m[2]
			}
			return
		}
		if m := formatted.FindStringSubmatch(l); m != nil {
			if d, err := time.ParseDuration(m[2]); err == nil {
				mkfs[m[1]] = mkfsRun{at, d}
			}
			return
		}
		m := runningCall.FindStringSubmatch(l)
		if m == nil {
			return
		}
		d, err := time.ParseDuration(m[3])
		if err != nil {
			return
		}
		for id, s := range byVolume {
			if !strings.Contains(l, id) {
				continue
			}
			switch {
			case m[1] == "failed":
				s.failedCalls++
			case m[2] == "/csi.v1.Node/NodeStageVolume" && s.stageEnd.IsZero():
				s.stageStart, s.stageEnd = at.Add(-d), at
			case m[2] == "/csi.v1.Node/NodePublishVolume" && s.publishEnd.IsZero():
				s.publishStart, s.publishEnd = at.Add(-d), at
			}
		}
	})
	for _, s := range byVolume {
		if r, ok := mkfs[s.device]; ok {
			s.mkfsStart, s.mkfsEnd = r.end.Add(-r.d), r.end
		}
	}
}

// runningCRI asks the real node's containerd, through the CRI the kubelet
// uses, when each pod's sandbox was created and its container started.
func (e *env) runningCRI(ctx context.Context, samples []*runningSample) {
	e.t.Helper()
	conn, err := grpc.NewClient("unix://"+e.real.ContainerdSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	for _, s := range samples {
		sb, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
			LabelSelector: map[string]string{"io.kubernetes.pod.uid": s.uid}}})
		if err != nil {
			e.t.Fatal(err)
		}
		for _, p := range sb.Items {
			if t := time.Unix(0, p.CreatedAt); s.sandboxCreated.IsZero() || t.Before(s.sandboxCreated) {
				s.sandboxCreated = t
			}
		}
		if s.containerID == "" {
			continue
		}
		st, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: s.containerID})
		if err != nil {
			e.t.Fatal(err)
		}
		s.containerStarted = time.Unix(0, st.Status.StartedAt)
	}
}

// first sets *t to at unless it is set already.
func runningFirst(t *time.Time, at time.Time) {
	if t.IsZero() {
		*t = at
	}
}

// runningStep is one step of the split: the time between two instants of
// a sample, or "-" when one of them is unknown.
type runningStep struct {
	name     string
	from, to func(s *runningSample) time.Time
}

var runningSteps = []runningStep{
	{"scheduled -> kubelet got the pod", runningScheduled, runningGotPod},
	{"kubelet got the pod -> mount started", runningGotPod, runningMountStarted},
	{"mount started -> NodeStage call", runningMountStarted, runningStageStart},
	{"NodeStage (driver)", runningStageStart, runningStageEnd},
	{"  of it: before mkfs (checks, record)", runningStageStart, runningMkfsStart},
	{"  of it: mkfs", runningMkfsStart, runningMkfsEnd},
	{"  of it: after mkfs (record, mount)", runningMkfsEnd, runningStageEnd},
	{"NodeStage end -> NodePublish call", runningStageEnd, runningPublishStart},
	{"NodePublish (driver)", runningPublishStart, runningPublishEnd},
	{"NodePublish end -> SetUp done", runningPublishEnd, runningSetUpDone},
	// The kubelet creates the sandbox once it finds the pod's volumes
	// mounted, checking when it gets the pod and every 300 ms after
	// (volumemanager's podAttachAndMountRetryInterval): the next two
	// steps show on which check a kind's mount was found.
	{"kubelet got the pod -> SetUp done", runningGotPod, runningSetUpDone},
	{"kubelet got the pod -> sandbox created", runningGotPod, runningSandbox},
	{"sandbox created -> container started", runningSandbox, runningStarted},
	{"container started -> Running seen", runningStarted, runningRunning},
}

func runningScheduled(s *runningSample) time.Time    { return s.scheduled }
func runningGotPod(s *runningSample) time.Time       { return s.kubeletAdd }
func runningMountStarted(s *runningSample) time.Time { return s.mountStarted }
func runningStageStart(s *runningSample) time.Time   { return s.stageStart }
func runningStageEnd(s *runningSample) time.Time     { return s.stageEnd }
func runningMkfsStart(s *runningSample) time.Time    { return s.mkfsStart }
func runningMkfsEnd(s *runningSample) time.Time      { return s.mkfsEnd }
func runningPublishStart(s *runningSample) time.Time { return s.publishStart }
func runningPublishEnd(s *runningSample) time.Time   { return s.publishEnd }
func runningSetUpDone(s *runningSample) time.Time    { return s.setUpDone }
func runningSandbox(s *runningSample) time.Time      { return s.sandboxCreated }
func runningStarted(s *runningSample) time.Time      { return s.containerStarted }
func runningRunning(s *runningSample) time.Time      { return s.running }

// runningMedian is the median of ds, false for none.
func runningMedian(ds []time.Duration) (time.Duration, bool) {
	if len(ds) == 0 {
		return 0, false
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[len(ds)/2], true
}

// runningCell is "median (max)" of ds in milliseconds, "-" for none.
func runningCell(ds []time.Duration) string {
	m, ok := runningMedian(ds)
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%s (%d)", runningMS(m), slices.Max(ds).Milliseconds())
}

func runningMS(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }

// runningSpan is to(s) - from(s), false when either is unknown.
func runningSpan(s *runningSample, from, to func(*runningSample) time.Time) (time.Duration, bool) {
	f, t := from(s), to(s)
	return t.Sub(f), !f.IsZero() && !t.IsZero()
}

// printRunning prints the figures of the counted rounds (not round 0),
// then every pod's own, and returns the median scheduled -> Running of
// each kind. load says how busy the machine was.
func printRunning(samples []*runningSample, rounds int, load string) map[string]time.Duration {
	byKind := map[string][]*runningSample{}
	for _, s := range samples {
		if s.round > 0 {
			byKind[s.kind.name] = append(byKind[s.kind.name], s)
		}
	}
	took := map[string]time.Duration{} // median by kind
	fmt.Printf("Pod scheduled -> Running on a real node (kubelet, containerd), a fresh 1 TiB sparse loop disk per volume pod;\n")
	fmt.Printf("%d rounds, one pod of each kind each, after a warm-up round. Noisy figures: compare medians (the machine's load is below).\n", rounds)
	fmt.Printf("Machine: %d CPUs, %s.\n", runtime.NumCPU(), load)
	fmt.Printf("  %-10s %9s %9s %13s %6s %13s %14s\n", "pod", "median", "max", "vs no volume", "ratio", "vs emptyDir", "API (1 s) med")
	for _, k := range runningKinds {
		var ds, api []time.Duration
		for _, s := range byKind[k.name] {
			ds = append(ds, s.took())
			if !s.apiStarted.IsZero() && !s.apiScheduled.IsZero() {
				api = append(api, s.apiStarted.Sub(s.apiScheduled))
			}
		}
		m, ok := runningMedian(ds)
		if !ok {
			continue
		}
		took[k.name] = m
		diff, ratio, vsEmpty, apiFig, target := "-", "-", "-", "-", ""
		if base, ok := took[runningKinds[0].name]; ok && k != runningKinds[0] {
			diff = fmt.Sprintf("%+d ms", (m - base).Milliseconds())
			ratio = fmt.Sprintf("%.2f", m.Seconds()/base.Seconds())
		}
		if e, ok := took[runningKinds[1].name]; ok && k.class != "" {
			vsEmpty = fmt.Sprintf("%+d ms", (m - e).Milliseconds())
		}
		if a, ok := runningMedian(api); ok {
			apiFig = fmt.Sprintf("%.0f s", a.Seconds())
		}
		if k.class != "" {
			target = "  (target: at most +1000 ms vs no volume)"
		}
		fmt.Printf("  %-10s %9s %9d %13s %6s %13s %14s%s\n", k.name, runningMS(m), slices.Max(ds).Milliseconds(), diff, ratio, vsEmpty, apiFig, target)
	}

	fmt.Printf("  where the time goes, median (max) in ms per step:\n")
	fmt.Printf("  %-38s", "step")
	for _, k := range runningKinds {
		fmt.Printf(" %14s", k.name)
	}
	fmt.Println()
	for _, st := range runningSteps {
		fmt.Printf("  %-38s", st.name)
		for _, k := range runningKinds {
			var ds []time.Duration
			for _, s := range byKind[k.name] {
				if d, ok := runningSpan(s, st.from, st.to); ok {
					ds = append(ds, d)
				}
			}
			fmt.Printf(" %14s", runningCell(ds))
		}
		fmt.Println()
	}
	fmt.Printf("  every pod in order (round 0 warms up), ms: scheduled->Running | kubelet got the pod -> mount started, -> SetUp done, -> sandbox created |\n")
	fmt.Printf("    NodeStage = before mkfs + mkfs + after | NodePublish | sandbox -> container started | -> Running seen | failed driver calls\n")
	span := func(s *runningSample, from, to func(*runningSample) time.Time) string {
		if d, ok := runningSpan(s, from, to); ok {
			return fmt.Sprint(d.Milliseconds())
		}
		return "-"
	}
	for _, s := range samples {
		stage, publish, failed := "-", "-", "-"
		if s.kind.class != "" {
			stage = fmt.Sprintf("%s = %s + %s + %s", span(s, runningStageStart, runningStageEnd), span(s, runningStageStart, runningMkfsStart),
				span(s, runningMkfsStart, runningMkfsEnd), span(s, runningMkfsEnd, runningStageEnd))
			publish, failed = span(s, runningPublishStart, runningPublishEnd), fmt.Sprint(s.failedCalls)
		}
		fmt.Printf("    %-17s %5d | %4s %4s %4s | %-20s | %3s | %4s | %3s | %s\n", s.pod, s.took().Milliseconds(),
			span(s, runningGotPod, runningMountStarted), span(s, runningGotPod, runningSetUpDone), span(s, runningGotPod, runningSandbox),
			stage, publish, span(s, runningSandbox, runningStarted), span(s, runningStarted, runningRunning), failed)
	}
	return took
}
