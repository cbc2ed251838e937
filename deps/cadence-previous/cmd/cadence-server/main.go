// Command cadence-server starts Cadence services from a configuration directory, with the
// command line of the server image's binary, at the previous minor the upgrade rehearsal
// starts from (CADENCE_UPGRADE_FROM in final_problem/versions.py):
//
//	cadence-server --root R --env E --config config start --services frontend,history
//
// The wiring is deps/cadence/cmd/cadence-server's (see there why the project has a launcher
// of its own) against the older module's API, which differs in resource.Params: it has no
// ZapLogger, RPCConfig, OperationalConfigStore or PercentageOnboarded (the shard
// distributor's onboarding came in 1.4), so none is set here. The rest, and what is left
// out (advanced visibility, the shard distributor, Cassandra, the gcloud archiver plugin,
// zonal isolation groups), is the same. Before starting it checks that the SQL schema is at
// least the version this release needs, as the release binary does.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/uber-go/tally"
	apiv1 "github.com/uber/cadence-idl/go/proto/api/v1"
	"go.uber.org/cadence/.gen/go/cadence/workflowserviceclient"
	"go.uber.org/cadence/compatibility"
	"go.uber.org/fx"

	"github.com/uber/cadence/common"
	"github.com/uber/cadence/common/archiver"
	"github.com/uber/cadence/common/archiver/provider"
	"github.com/uber/cadence/common/asyncworkflow/queue"
	"github.com/uber/cadence/common/blobstore/filestore"
	"github.com/uber/cadence/common/clock"
	"github.com/uber/cadence/common/clock/clockfx"
	"github.com/uber/cadence/common/cluster"
	"github.com/uber/cadence/common/config"
	"github.com/uber/cadence/common/dynamicconfig"
	"github.com/uber/cadence/common/dynamicconfig/dynamicconfigfx"
	"github.com/uber/cadence/common/dynamicconfig/dynamicproperties"
	"github.com/uber/cadence/common/log"
	"github.com/uber/cadence/common/log/logfx"
	"github.com/uber/cadence/common/log/tag"
	"github.com/uber/cadence/common/membership"
	"github.com/uber/cadence/common/metrics"
	"github.com/uber/cadence/common/metrics/metricsfx"
	"github.com/uber/cadence/common/peerprovider/ringpopprovider"
	"github.com/uber/cadence/common/resource"
	"github.com/uber/cadence/common/rpc"
	"github.com/uber/cadence/common/service"
	"github.com/uber/cadence/service/frontend"
	"github.com/uber/cadence/service/history"
	"github.com/uber/cadence/service/matching"
	"github.com/uber/cadence/service/worker"
	"github.com/uber/cadence/service/worker/diagnostics/invariant"
	"github.com/uber/cadence/service/worker/diagnostics/invariant/failure"
	"github.com/uber/cadence/service/worker/diagnostics/invariant/retry"
	"github.com/uber/cadence/service/worker/diagnostics/invariant/timeout"
	sqltool "github.com/uber/cadence/tools/sql"

	_ "github.com/uber/cadence/common/persistence/sql/sqlplugin/postgres" // the platform's database
)

// deps is what the fx modules of the root module build for one service.
type deps struct {
	fx.In

	Config        config.Config
	Logger        log.Logger
	DynamicConfig dynamicconfig.Client
	Collection    *dynamicconfig.Collection
	TimeSource    clock.TimeSource
	Scope         tally.Scope
	MetricsClient metrics.Client
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cadence-server:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	global := flag.NewFlagSet("cadence-server", flag.ContinueOnError)
	root := global.String("root", envOr(config.EnvKeyRoot, "."), "root directory of the execution environment")
	configDir := global.String("config", envOr(config.EnvKeyConfigDir, "config"), "config directory, relative to --root or absolute")
	env := global.String("env", envOr(config.EnvKeyEnvironment, "development"), "runtime environment: loads <config>/<env>.yaml")
	zone := global.String("zone", envOr(config.EnvKeyAvailabilityZone, ""), "availability zone")
	if err := global.Parse(args); err != nil {
		return err
	}
	rest := global.Args()
	if len(rest) == 0 || rest[0] != "start" {
		return errors.New("usage: cadence-server [--root R] [--env E] [--config C] start --services a,b")
	}
	start := flag.NewFlagSet("start", flag.ContinueOnError)
	services := start.String("services", strings.Join(service.ShortNames(service.ListWithRing), ","), "services to start")
	if err := start.Parse(rest[1:]); err != nil {
		return err
	}
	dir := *configDir
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(*root, dir)
	}

	var apps []*fx.App
	for _, name := range strings.Split(*services, ",") {
		name = strings.TrimSpace(name)
		if !isService(name) {
			return fmt.Errorf("unknown service %q: use %s", name, strings.Join(service.ShortNames(service.List), ", "))
		}
		apps = append(apps, newApp(name, dir, *root, config.Context{Environment: *env, Zone: *zone}))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i, app := range apps {
		if err := app.Start(ctx); err != nil {
			stopAll(apps[:i])
			return err
		}
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
	stopAll(apps)
	return nil
}

func newApp(name, configDir, rootDir string, cfgCtx config.Context) *fx.App {
	return fx.New(
		fx.NopLogger,
		fx.Supply(
			fx.Annotated{Name: "service", Target: name},
			fx.Annotated{Name: "service-full-name", Target: service.FullName(name)},
			fx.Annotated{Name: "config-dir", Target: configDir},
			fx.Annotated{Name: "root-dir", Target: rootDir},
			cfgCtx,
		),
		config.Module,
		logfx.Module,
		metricsfx.Module,
		dynamicconfigfx.Module,
		clockfx.Module,
		fx.Invoke(func(lc fx.Lifecycle, d deps) {
			var daemon common.Daemon
			done := make(chan struct{})
			lc.Append(fx.Hook{
				OnStart: func(context.Context) error {
					if err := sqltool.VerifyCompatibleVersion(d.Config.Persistence); err != nil {
						return fmt.Errorf("%s: sql schema version check failed: %w", name, err)
					}
					var err error
					if daemon, err = newService(name, d); err != nil {
						return fmt.Errorf("%s: %w", name, err)
					}
					go func() {
						daemon.Start()
						close(done)
					}()
					return nil
				},
				OnStop: func(context.Context) error {
					if daemon == nil {
						return nil
					}
					daemon.Stop()
					select {
					case <-done:
					case <-time.After(time.Minute):
						d.Logger.Warn("timed out waiting for service to stop", tag.Service(name))
					}
					return nil
				},
			})
		}),
	)
}

// newService builds one service's daemon; its parameters follow resource.Params.
func newService(name string, d deps) (common.Daemon, error) {
	cfg := d.Config
	svcCfg, err := cfg.GetServiceConfig(name)
	if err != nil {
		return nil, err
	}
	hostName, err := os.Hostname()
	if err != nil {
		return nil, fmt.Errorf("hostname: %w", err)
	}
	fullName := service.FullName(name)
	logger := d.Logger.WithTags(tag.Service(fullName))
	group := cfg.ClusterGroupMetadata
	// The dynamic config module's collection, filtered by the current cluster's name.
	dc := d.Collection

	params := resource.Params{
		Name:              fullName,
		HostName:          hostName,
		Logger:            logger,
		PersistenceConfig: cfg.Persistence,
		DynamicConfig:     d.DynamicConfig,
		MetricScope:       d.Scope,
		MetricsClient:     d.MetricsClient,
	}

	rpcParams, err := rpc.NewParams(fullName, &cfg, dc, logger, d.MetricsClient)
	if err != nil {
		return nil, fmt.Errorf("rpc params: %w", err)
	}
	// One outbound per cluster of the group, the current one included: the client bean
	// reaches the frontend through it.
	rpcParams.OutboundsBuilder = rpc.CombineOutbounds(rpcParams.OutboundsBuilder,
		rpc.NewCrossDCOutbounds(group.ClusterGroup, rpc.NewDNSPeerChooserFactory(cfg.PublicClient.RefreshInterval, logger)))
	rpcFactory := rpc.NewFactory(logger, rpcParams)
	params.RPCFactory = rpcFactory

	peers, err := ringpopprovider.New(fullName, &cfg.Ringpop, rpcFactory.GetTChannel(), membership.PortMap{
		membership.PortGRPC:     svcCfg.RPC.GRPCPort,
		membership.PortTchannel: svcCfg.RPC.Port,
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("ringpop: %w", err)
	}
	params.HashRings = make(map[string]membership.SingleProvider)
	for _, ring := range service.ListWithRing {
		params.HashRings[ring] = membership.NewHashring(ring, peers, d.TimeSource, logger, d.MetricsClient.Scope(metrics.HashringScope))
	}
	if params.MembershipResolver, err = membership.NewResolver(peers, d.MetricsClient, logger, params.HashRings); err != nil {
		return nil, fmt.Errorf("membership: %w", err)
	}

	params.PProfInitializer = svcCfg.PProf.NewInitializer(logger)
	params.ClusterRedirectionPolicy = group.ClusterRedirectionPolicy
	// No isolation groups: the release reads them from dynamic config, the platform sets none.
	params.GetIsolationGroups = func() []string { return nil }
	params.ClusterMetadata = cluster.NewMetadata(*group, dc.GetBoolPropertyFilteredByDomain(dynamicproperties.UseNewInitialFailoverVersion), d.MetricsClient, logger)

	if common.IsAdvancedVisibilityWritingEnabled(dc.GetStringProperty(dynamicproperties.WriteVisibilityStoreName)(), cfg.Persistence.IsAdvancedVisibilityConfigExist()) {
		return nil, errors.New("advanced visibility is configured: this launcher supports SQL visibility only")
	}

	public := rpcFactory.GetDispatcher().ClientConfig(rpc.OutboundPublicClient)
	if rpc.IsGRPCOutbound(public) {
		params.PublicClient = compatibility.NewThrift2ProtoAdapter(
			apiv1.NewDomainAPIYARPCClient(public),
			apiv1.NewWorkflowAPIYARPCClient(public),
			apiv1.NewWorkerAPIYARPCClient(public),
			apiv1.NewVisibilityAPIYARPCClient(public),
		)
	} else {
		params.PublicClient = workflowserviceclient.New(public)
	}

	params.ArchivalMetadata = archiver.NewArchivalMetadata(dc,
		cfg.Archival.History.Status, cfg.Archival.History.EnableRead,
		cfg.Archival.Visibility.Status, cfg.Archival.Visibility.EnableRead,
		&cfg.DomainDefaults.Archival)
	params.ArchiverProvider = provider.NewArchiverProvider(cfg.Archival.History.Provider, cfg.Archival.Visibility.Provider)
	params.PersistenceConfig.TransactionSizeLimit = dc.GetIntProperty(dynamicproperties.TransactionSizeLimit)
	params.PersistenceConfig.ErrorInjectionRate = dc.GetFloat64Property(dynamicproperties.PersistenceErrorInjectionRate)
	params.AuthorizationConfig = cfg.Authorization
	if params.BlobstoreClient, err = filestore.NewFilestoreClient(cfg.Blobstore.Filestore); err != nil {
		logger.Warn("no file blob store", tag.Error(err))
		params.BlobstoreClient = nil
	}
	if params.AsyncWorkflowQueueProvider, err = queue.NewAsyncQueueProvider(cfg.AsyncWorkflowQueues); err != nil {
		return nil, fmt.Errorf("async workflow queues: %w", err)
	}
	params.KafkaConfig = cfg.Kafka
	// What the worker service's diagnostics workflow checks a workflow for.
	params.DiagnosticsInvariants = []invariant.Invariant{
		timeout.NewInvariant(timeout.Params{Client: params.PublicClient}), failure.NewInvariant(), retry.NewInvariant(),
	}

	logger.Info("starting service " + name)
	switch fullName {
	case service.Frontend:
		return frontend.NewService(&params)
	case service.History:
		return history.NewService(&params)
	case service.Matching:
		return matching.NewService(&params)
	case service.Worker:
		return worker.NewService(&params)
	}
	return nil, fmt.Errorf("unknown service %q", name)
}

func stopAll(apps []*fx.App) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := len(apps) - 1; i >= 0; i-- {
		_ = apps[i].Stop(ctx)
	}
}

func isService(name string) bool {
	for _, s := range service.ShortNames(service.List) {
		if s == name {
			return true
		}
	}
	return false
}

func envOr(key, fallback string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return fallback
}
