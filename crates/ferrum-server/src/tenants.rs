//! Tenants: the `--tenants tenants.toml` file, API key -> tenant resolution, per-tenant
//! metrics and the `GET /v1/admin/tenants` view.
//!
//! ```toml
//! w_in = 1.0                  # cost of an uncached prompt token (default 1)
//! w_out = 2.0                 # cost of a generated token (default 2)
//! admin_keys = ["admin-key"]  # may read /v1/admin/*
//!
//! [[tenant]]
//! name = "acme"
//! weight = 2.0                # share relative to other tenants (default 1)
//! api_keys = ["sk-acme-1"]
//! max_running = 16            # optional limits
//! max_kv_share = 0.5
//! max_queued = 200
//! public_prefixes = ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"]
//! ```
//!
//! With a tenants file every `/v1/*` request needs the key of a tenant (or an admin key);
//! the tenant is the key's, the user is the body's `user` field or else the
//! `X-Ferrum-User` header. The engine then schedules with [`ferrum_engine::FairPolicy`] and
//! partitions the prefix cache by tenant.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use ferrum_engine::{FairConfig, TenantLimits, TenantSpec, TenantStats};

use crate::codec::TextCodec;
use crate::metrics::Histogram;
use crate::state::AppState;

/// Header naming the end user when the body has no `user` field.
pub const USER_HEADER: &str = "x-ferrum-user";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTenant {
    name: String,
    #[serde(default = "one")]
    weight: f64,
    #[serde(default)]
    api_keys: Vec<String>,
    max_running: Option<usize>,
    max_kv_share: Option<f64>,
    max_queued: Option<usize>,
    #[serde(default)]
    public_prefixes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "one")]
    w_in: f64,
    #[serde(default = "two")]
    w_out: f64,
    #[serde(default)]
    admin_keys: Vec<String>,
    #[serde(default, rename = "tenant")]
    tenants: Vec<FileTenant>,
}

fn one() -> f64 {
    1.0
}

fn two() -> f64 {
    2.0
}

/// A parsed, validated tenants file.
#[derive(Debug, Clone)]
pub struct Tenants {
    fair: FairConfig,
    by_key: HashMap<String, String>,
    admin_keys: Vec<String>,
    public: Vec<(String, Vec<String>)>,
}

/// Who a request is from, set by the auth middleware for the handlers.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The tenant of the API key.
    pub tenant: Option<String>,
    /// The `X-Ferrum-User` header.
    pub user: Option<String>,
}

impl Tenants {
    /// Parses TOML text; errors name the problem (duplicate keys or tenants, bad weights).
    pub fn parse(text: &str) -> Result<Tenants, String> {
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_key = HashMap::new();
        for t in &f.tenants {
            if t.name.is_empty() {
                return Err("a tenant has an empty name".into());
            }
            for k in &t.api_keys {
                if k.is_empty() || by_key.insert(k.clone(), t.name.clone()).is_some() {
                    return Err(format!("API key of tenant {:?} is empty or reused", t.name));
                }
            }
        }
        if f.admin_keys.iter().any(|k| by_key.contains_key(k)) {
            return Err("an admin key is also a tenant key".into());
        }
        let fair = FairConfig {
            w_in: f.w_in,
            w_out: f.w_out,
            tenants: f
                .tenants
                .iter()
                .map(|t| TenantSpec {
                    name: t.name.clone(),
                    weight: t.weight,
                    limits: TenantLimits {
                        max_running: t.max_running,
                        max_kv_share: t.max_kv_share,
                        max_queued: t.max_queued,
                    },
                })
                .collect(),
        };
        fair.validate()?;
        let public = f
            .tenants
            .iter()
            .map(|t| (t.name.clone(), t.public_prefixes.clone()))
            .collect();
        Ok(Tenants {
            fair,
            by_key,
            admin_keys: f.admin_keys,
            public,
        })
    }

    /// Reads and parses a file.
    pub fn load(path: &std::path::Path) -> Result<Tenants, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Tenants::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The fairness policy's configuration.
    pub fn fair_config(&self) -> FairConfig {
        self.fair.clone()
    }

    /// Each tenant's public prefixes as token ids (for
    /// [`ferrum_engine::EngineConfig::public_prefixes`]); prefixes are encoded with special
    /// tokens recognised, so they can include the chat template's markers.
    pub fn public_prefixes(
        &self,
        codec: &dyn TextCodec,
    ) -> Result<HashMap<String, Vec<Vec<u32>>>, String> {
        let mut out: HashMap<String, Vec<Vec<u32>>> = HashMap::new();
        for (t, ps) in &self.public {
            for p in ps {
                let ids = codec
                    .encode(p, true)
                    .map_err(|e| format!("public prefix of {t:?}: {}", e.0))?;
                out.entry(t.clone()).or_default().push(ids);
            }
        }
        Ok(out)
    }

    /// The tenant whose key `key` is.
    pub fn tenant_of(&self, key: &str) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    /// Whether `key` is an admin key.
    pub fn is_admin(&self, key: &str) -> bool {
        self.admin_keys
            .iter()
            .any(|k| crate::routes::same_key(k, key))
    }

    /// Configured weight of `tenant` (1 if unknown).
    fn weight(&self, tenant: &str) -> f64 {
        self.fair
            .tenants
            .iter()
            .find(|t| t.name == tenant)
            .map_or(1.0, |t| t.weight)
    }
}

/// Per-tenant time-to-first-token histograms (server side; the engine's counters are read at
/// scrape time).
#[derive(Debug, Default)]
pub struct TenantMetrics {
    ttft: Mutex<BTreeMap<String, Arc<Histogram>>>,
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl TenantMetrics {
    /// Records a first token of a request of `tenant`.
    pub fn observe_ttft(&self, tenant: &str, d: Duration) {
        let h = match self.ttft.lock() {
            Ok(mut m) => m
                .entry(tenant.to_string())
                .or_insert_with(|| Arc::new(Histogram::ttft()))
                .clone(),
            Err(_) => return,
        };
        h.observe(d);
    }

    /// Appends the per-tenant series to a Prometheus exposition.
    pub fn render(&self, out: &mut String, tenants: &[TenantStats]) {
        type Get = fn(&TenantStats) -> f64;
        let series: [(&str, &str, &str, Get); 6] = [
            (
                "ferrum_tenant_service_tokens_total",
                "counter",
                "Weighted service (w_in * uncached prompt + w_out * generated tokens).",
                |t| t.service,
            ),
            (
                "ferrum_tenant_virtual_counter",
                "gauge",
                "Virtual token counter (service / weight, after lifting).",
                |t| t.virtual_counter,
            ),
            (
                "ferrum_tenant_queue_depth",
                "gauge",
                "Requests of the tenant waiting.",
                |t| t.waiting as f64,
            ),
            (
                "ferrum_tenant_running_sequences",
                "gauge",
                "Requests of the tenant running.",
                |t| t.running as f64,
            ),
            (
                "ferrum_tenant_kv_blocks",
                "gauge",
                "KV blocks held by the tenant's running requests.",
                |t| t.kv_blocks as f64,
            ),
            (
                "ferrum_tenant_generated_tokens_total",
                "counter",
                "Generated tokens charged to the tenant.",
                |t| t.generated_tokens as f64,
            ),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for t in tenants {
                let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", escape(&t.name), get(t));
            }
        }
        if let Ok(m) = self.ttft.lock() {
            let name = "ferrum_tenant_time_to_first_token_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Time from arrival to first token, by tenant.\n# TYPE {name} histogram"
            );
            for (tenant, h) in m.iter() {
                h.render_series(out, name, &format!("tenant=\"{}\"", escape(tenant)));
            }
        }
    }
}

/// `GET /v1/admin/tenants`: every tenant's counters, its share of the service so far and its
/// weight share (admin key required when the server has keys).
pub(crate) async fn admin_tenants(State(state): State<Arc<AppState>>) -> Response {
    let model = match crate::api::ready_model(&state) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let stats = model.engine.tenants_async().await.unwrap_or_default();
    let total: f64 = stats.iter().map(|t| t.service).sum();
    let weight = |t: &TenantStats| {
        state
            .config
            .tenants
            .as_ref()
            .map_or(t.weight, |c| c.weight(&t.name))
    };
    let total_w: f64 = stats.iter().map(weight).sum();
    let data: Vec<serde_json::Value> = stats
        .iter()
        .map(|t| {
            let mut v = serde_json::to_value(t).unwrap_or_default();
            v["share"] = json!(if total > 0.0 { t.service / total } else { 0.0 });
            v["weight_share"] = json!(if total_w > 0.0 {
                weight(t) / total_w
            } else {
                0.0
            });
            v
        })
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        admin_keys = ["root"]
        [[tenant]]
        name = "a"
        weight = 2.0
        api_keys = ["ka1", "ka2"]
        max_running = 4
        [[tenant]]
        name = "b"
        api_keys = ["kb"]
        public_prefixes = ["hello world"]
    "#;

    #[test]
    fn keys_resolve_to_their_tenant_and_limits_carry_over() {
        let t = Tenants::parse(FILE).expect("valid");
        assert_eq!(t.tenant_of("ka2"), Some("a"));
        assert_eq!(t.tenant_of("kb"), Some("b"));
        assert_eq!(t.tenant_of("root"), None);
        assert!(t.is_admin("root") && !t.is_admin("ka1"));
        let f = t.fair_config();
        assert_eq!((f.w_in, f.w_out), (1.0, 2.0));
        assert_eq!(f.tenants[0].weight, 2.0);
        assert_eq!(f.tenants[0].limits.max_running, Some(4));
        assert_eq!(f.tenants[1].weight, 1.0);
        let p = t.public_prefixes(&crate::AsciiCodec).expect("encodes");
        assert_eq!(p["b"][0].len(), "hello world".len());
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        for bad in [
            "[[tenant]]\nname = \"a\"\nweight = 0.0",
            "[[tenant]]\nname = \"a\"\napi_keys = [\"k\"]\n[[tenant]]\nname = \"b\"\napi_keys = [\"k\"]",
            "[[tenant]]\nname = \"a\"\nmax_kv_share = 1.5",
            "[[tenant]]\nname = \"a\"\nfrobnicate = 1",
            "admin_keys = [\"k\"]\n[[tenant]]\nname = \"a\"\napi_keys = [\"k\"]",
            "w_out = -1.0",
            "not toml at all [",
        ] {
            assert!(Tenants::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_series_render_with_labels() {
        let m = TenantMetrics::default();
        m.observe_ttft("a", Duration::from_millis(20));
        let stats = vec![TenantStats {
            name: "a".into(),
            service: 42.0,
            waiting: 3,
            ..TenantStats::default()
        }];
        let mut out = String::new();
        m.render(&mut out, &stats);
        assert!(out.contains("ferrum_tenant_service_tokens_total{tenant=\"a\"} 42"));
        assert!(out.contains("ferrum_tenant_queue_depth{tenant=\"a\"} 3"));
        assert!(out.contains("ferrum_tenant_time_to_first_token_seconds_count{tenant=\"a\"} 1"));
    }
}
