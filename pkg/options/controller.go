package options

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Controller are the settings of the cluster component
// (ecs-localdisk-csi controller).
type Controller struct {
	DriverName string
	// Namespace is the driver's namespace: its CSIStorageCapacity objects
	// and, by default, the leader election lease.
	Namespace string

	Kubeconfig   string
	KubeAPIQPS   float64
	KubeAPIBurst int

	LeaderElection          bool
	LeaderElectionNamespace string

	// Cloud is ecs (confirm node loss with ECS) or none.
	Cloud            string
	Region           string
	MetadataEndpoint string
	ECSEndpoint      string
	CredentialsFile  string
	RAMRole          string

	NodeLossGracePeriod time.Duration
	Interval            time.Duration
	// CloudEventInterval is how often ECS is asked for damaged disks;
	// AcceptDiskEvents consents to their repair once no volume uses them.
	CloudEventInterval time.Duration
	AcceptDiskEvents   bool
	// HTTPEndpoint serves /healthz (host:port); "" is off.
	HTTPEndpoint string
}

// AddFlags registers the controller's options on fs.
func (o *Controller) AddFlags(fs *flag.FlagSet) {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "kube-system"
	}
	fs.StringVar(&o.DriverName, "driver-name", DefaultDriverName, "CSI driver name")
	fs.StringVar(&o.Namespace, "namespace", ns, "the driver's namespace, where its CSIStorageCapacity objects are (default: env POD_NAMESPACE, else kube-system)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig of the Kubernetes API (default: the pod's service account)")
	fs.Float64Var(&o.KubeAPIQPS, "kube-api-qps", 10, "queries per second to the Kubernetes API")
	fs.IntVar(&o.KubeAPIBurst, "kube-api-burst", 20, "burst of queries to the Kubernetes API")
	fs.BoolVar(&o.LeaderElection, "leader-election", true, "run only while holding the leader lease, so that one replica decides")
	fs.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader lease (default: --namespace)")
	fs.StringVar(&o.Cloud, "cloud", "ecs", "ecs: confirm with ECS that a lost node's instance is released before its volumes count as lost; none: a Node deleted for longer than --node-loss-grace-period counts as gone")
	fs.StringVar(&o.Region, "region", os.Getenv("ALIBABA_CLOUD_REGION_ID"), "ecs: the cluster's region (default: env ALIBABA_CLOUD_REGION_ID, else the metadata server's)")
	fs.StringVar(&o.MetadataEndpoint, "metadata-endpoint", os.Getenv("ALIBABA_CLOUD_METADATA_ENDPOINT"), "ecs: instance metadata server (default http://100.100.100.200; env ALIBABA_CLOUD_METADATA_ENDPOINT)")
	fs.StringVar(&o.ECSEndpoint, "ecs-endpoint", os.Getenv("ALIBABA_CLOUD_ECS_ENDPOINT"), "ecs: ECS OpenAPI endpoint, a host or URL (default: the region's public endpoint; env ALIBABA_CLOUD_ECS_ENDPOINT)")
	fs.StringVar(&o.CredentialsFile, "credentials-file", "", "ecs: file or Secret directory with ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET (and SECURITY_TOKEN)")
	fs.StringVar(&o.RAMRole, "ram-role", "", "ecs: RAM role to take from instance metadata (default: the one attached to the instance)")
	fs.DurationVar(&o.NodeLossGracePeriod, "node-loss-grace-period", 2*time.Minute, "how long a node must stay deleted, or its instance released, before its volumes count as lost")
	fs.DurationVar(&o.Interval, "resync-interval", 10*time.Second, "how often the controller checks again besides on every change")
	fs.DurationVar(&o.CloudEventInterval, "cloud-event-interval", time.Minute, "ecs: how often ECS is asked which local disks are damaged (DescribeInstanceHistoryEvents, DescribeDisksFullStatus)")
	fs.BoolVar(&o.AcceptDiskEvents, "accept-disk-events", false, "ecs: accept the Inquiring event of a damaged local disk once no volume uses it (AcceptInquiredSystemEvent), so that ECS isolates and repairs it; needs deploy/ram-policy-accept-events.json")
	fs.StringVar(&o.HTTPEndpoint, "http-endpoint", "", "serve /healthz at this host:port, e.g. :9811 (default: off)")
}

// Validate reports every problem with the options at once.
func (o *Controller) Validate() error {
	var errs []error
	if o.DriverName == "" || strings.ContainsAny(o.DriverName, "/ ") {
		errs = append(errs, fmt.Errorf("--driver-name %q is not a valid CSI driver name", o.DriverName))
	}
	if o.Namespace == "" {
		errs = append(errs, errors.New("--namespace is required"))
	}
	errs = append(errs, checkRates(o.KubeAPIQPS, o.KubeAPIBurst), checkHostPort("--http-endpoint", o.HTTPEndpoint, ":9811"))
	if o.NodeLossGracePeriod < time.Second {
		errs = append(errs, fmt.Errorf("--node-loss-grace-period %v must be at least 1s", o.NodeLossGracePeriod))
	}
	if o.Interval < time.Second {
		errs = append(errs, fmt.Errorf("--resync-interval %v must be at least 1s", o.Interval))
	}
	if o.CloudEventInterval < time.Second {
		errs = append(errs, fmt.Errorf("--cloud-event-interval %v must be at least 1s", o.CloudEventInterval))
	}
	switch o.Cloud {
	case "ecs":
		if o.CredentialsFile != "" && !filepath.IsAbs(o.CredentialsFile) {
			errs = append(errs, fmt.Errorf("--credentials-file %q must be an absolute path", o.CredentialsFile))
		}
	case "none":
		// --region and the endpoints may come from the environment: ignored.
		for name, v := range map[string]string{"--credentials-file": o.CredentialsFile, "--ram-role": o.RAMRole} {
			if v != "" {
				errs = append(errs, fmt.Errorf("%s only applies to --cloud=ecs", name))
			}
		}
		if o.AcceptDiskEvents {
			errs = append(errs, errors.New("--accept-disk-events only applies to --cloud=ecs"))
		}
	default:
		errs = append(errs, fmt.Errorf("--cloud %q is not supported (ecs, none)", o.Cloud))
	}
	return errors.Join(errs...)
}
