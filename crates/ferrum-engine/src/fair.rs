//! Hierarchical fairness: weighted shares by virtual-token accounting (tenant -> user ->
//! request).
//!
//! [`FairPolicy`] applies the Virtual Token Counter idea (Sheng et al., OSDI 2024) at two
//! levels, as CFS group scheduling does: each tenant and each user inside a tenant keeps a
//! *virtual counter* of the service it received, `(w_in * uncached prompt tokens + w_out *
//! generated tokens) / weight`. Prompt tokens are charged when a request is first admitted
//! (so several admissions in one step see each other's cost), generated tokens when they are
//! sampled. Admission picks the tenant with the smallest counter among those with a waiting
//! request and within its limits, then that tenant's waiting user with the smallest counter,
//! then that user's earliest request.
//!
//! Lifting: a tenant (or user) that becomes active again (its first request in the engine
//! after having none) is raised to the smallest counter of the active tenants (users of the
//! same tenant), or, when none is active, to the counter the last active one left with. So
//! idling earns no credit and a late joiner cannot starve the incumbents.
//!
//! Work conservation: the policy only orders admissions; whenever a waiting request of any
//! tenant within its limits exists, one is admitted, so capacity never idles while someone
//! waits.
//!
//! Bound (equal-weight case in `docs/fairness.md`): while tenants `f` and `g` both have waiting
//! requests, over any interval `|S_f/w_f - S_g/w_g| <= B_f + B_g` with `B_x = (w_in * P +
//! R_x * w_out * G) / w_x`, where `P` is the longest prompt, `G` the largest `max_tokens` and
//! `R_x` the most requests `x` can run at once. Reason: when `f` is admitted its counter is the
//! smallest, and afterwards it grows by at most the new request's prompt plus the outputs of
//! the requests it has in flight.
//!
//! Isolation: a tenant's `max_running` and `max_kv_share` limits keep it from being admitted
//! past them, `max_queued` bounds its waiting requests at submit, and under memory pressure
//! the victim is taken from the tenant whose share of running KV blocks most exceeds its
//! weight share (its user with the largest counter, that user's latest request).

use std::collections::HashMap;

pub mod scenario;
pub mod sim;

use crate::policy::{RequestInfo, SchedulingPolicy};
use crate::request::RequestId;

/// Optional bounds on one tenant's use of the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantLimits {
    /// Most requests of the tenant running at once.
    pub max_running: Option<usize>,
    /// Largest fraction (0, 1] of the KV pool the tenant's running requests may hold before
    /// it stops being admitted.
    pub max_kv_share: Option<f64>,
    /// Most requests of the tenant waiting; beyond it submits are refused as a full queue.
    pub max_queued: Option<usize>,
}

/// One configured tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSpec {
    /// Name (requests carry it in [`crate::Request::tenant`]).
    pub name: String,
    /// Relative share of service (> 0).
    pub weight: f64,
    /// Isolation limits.
    pub limits: TenantLimits,
}

impl TenantSpec {
    /// A tenant with `weight` and no limits.
    pub fn new(name: impl Into<String>, weight: f64) -> Self {
        TenantSpec {
            name: name.into(),
            weight,
            limits: TenantLimits::default(),
        }
    }
}

/// Configuration of [`FairPolicy`].
#[derive(Debug, Clone, PartialEq)]
pub struct FairConfig {
    /// Known tenants; a request of an unknown (or no) tenant belongs to a tenant of that name
    /// (or `""`) with weight 1 and no limits.
    pub tenants: Vec<TenantSpec>,
    /// Cost of one uncached prompt token.
    pub w_in: f64,
    /// Cost of one generated token.
    pub w_out: f64,
}

impl Default for FairConfig {
    fn default() -> Self {
        FairConfig {
            tenants: Vec::new(),
            w_in: 1.0,
            w_out: 2.0,
        }
    }
}

impl FairConfig {
    /// Rejects non-positive or non-finite weights and costs and out-of-range KV shares.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [("w_in", self.w_in), ("w_out", self.w_out)] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} must be a finite number >= 0"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.tenants {
            if !seen.insert(t.name.as_str()) {
                return Err(format!("tenant {:?} is defined twice", t.name));
            }
            if !t.weight.is_finite() || t.weight <= 0.0 {
                return Err(format!("tenant {:?}: weight must be > 0", t.name));
            }
            if let Some(s) = t.limits.max_kv_share {
                if !(s > 0.0 && s <= 1.0) {
                    return Err(format!(
                        "tenant {:?}: max_kv_share must be in (0, 1]",
                        t.name
                    ));
                }
            }
            if t.limits.max_running == Some(0) {
                return Err(format!("tenant {:?}: max_running must be >= 1", t.name));
            }
        }
        Ok(())
    }
}

/// A tenant's counters, for metrics and the admin view.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TenantStats {
    /// Tenant name (`""` for requests without a tenant).
    pub name: String,
    /// Configured weight.
    pub weight: f64,
    /// Virtual counter: weighted service divided by weight (after lifting).
    pub virtual_counter: f64,
    /// Weighted service received: `w_in * uncached prompt + w_out * generated` tokens.
    pub service: f64,
    /// Uncached prompt tokens charged.
    pub prompt_tokens: u64,
    /// Generated tokens charged.
    pub generated_tokens: u64,
    /// Requests waiting.
    pub waiting: usize,
    /// Requests running.
    pub running: usize,
    /// KV blocks held by running requests at the start of the latest step.
    pub kv_blocks: usize,
    /// Users seen.
    pub users: usize,
}

/// One level of the hierarchy: siblings with counters and lifting.
#[derive(Debug, Default)]
struct Node {
    counter: f64,
    weight: f64,
    /// Requests in the engine (waiting or running).
    active: usize,
}

/// The counter a node becoming active starts from: its own, raised to the smallest counter
/// of its active siblings, or to `floor` (where the last active sibling left) when none is.
fn lift<'a, K: PartialEq + 'a>(
    siblings: impl Iterator<Item = (&'a K, &'a Node)>,
    key: &K,
    own: f64,
    floor: f64,
) -> f64 {
    let min_active = siblings
        .filter(|(k, n)| *k != key && n.active > 0)
        .map(|(_, n)| n.counter)
        .min_by(f64::total_cmp);
    own.max(min_active.unwrap_or(floor))
}

#[derive(Debug, Default)]
struct Tenant {
    node: Node,
    limits: TenantLimits,
    users: HashMap<String, Node>,
    user_floor: f64,
    service: f64,
    prompt_tokens: u64,
    generated_tokens: u64,
    waiting: usize,
    running: usize,
    kv_blocks: usize,
}

/// The hierarchical virtual-token-counter policy; see the module docs.
#[derive(Debug)]
pub struct FairPolicy {
    cfg: FairConfig,
    tenants: HashMap<String, Tenant>,
    floor: f64,
    /// Which (tenant, user) each request in the engine belongs to, and whether it runs.
    reqs: HashMap<RequestId, (String, String, bool)>,
    total_blocks: usize,
}

fn key(s: Option<&str>) -> String {
    s.unwrap_or_default().to_string()
}

impl FairPolicy {
    /// A policy over `cfg`'s tenants (validate `cfg` first; bad weights are clamped to 1).
    pub fn new(cfg: FairConfig) -> Self {
        let mut tenants = HashMap::new();
        for t in &cfg.tenants {
            let weight = if t.weight.is_finite() && t.weight > 0.0 {
                t.weight
            } else {
                1.0
            };
            tenants.insert(
                t.name.clone(),
                Tenant {
                    node: Node {
                        weight,
                        ..Node::default()
                    },
                    limits: t.limits.clone(),
                    ..Tenant::default()
                },
            );
        }
        FairPolicy {
            cfg,
            tenants,
            floor: 0.0,
            reqs: HashMap::new(),
            total_blocks: 0,
        }
    }

    fn tenant_mut(&mut self, name: &str) -> &mut Tenant {
        self.tenants
            .entry(name.to_string())
            .or_insert_with(|| Tenant {
                node: Node {
                    weight: 1.0,
                    ..Node::default()
                },
                ..Tenant::default()
            })
    }

    /// Charges `cost` weighted tokens to `tenant` / `user`.
    fn charge(&mut self, tenant: &str, user: &str, cost: f64) {
        let t = self.tenant_mut(tenant);
        t.service += cost;
        t.node.counter += cost / t.node.weight;
        let u = t.users.entry(user.to_string()).or_insert_with(|| Node {
            weight: 1.0,
            ..Node::default()
        });
        u.counter += cost / u.weight;
    }

    /// Whether `t` may have one more running request under its limits.
    fn within_limits(&self, t: &Tenant) -> bool {
        if t.limits.max_running.is_some_and(|m| t.running >= m) {
            return false;
        }
        if let Some(share) = t.limits.max_kv_share {
            if self.total_blocks > 0 && t.kv_blocks as f64 >= share * self.total_blocks as f64 {
                return false;
            }
        }
        true
    }

    fn set_running(&mut self, id: RequestId, running: bool, blocks: usize) {
        let Some((tenant, _, r)) = self.reqs.get_mut(&id) else {
            return;
        };
        let was = std::mem::replace(r, running);
        let tenant = tenant.clone();
        let t = self.tenant_mut(&tenant);
        match (was, running) {
            (false, true) => {
                t.waiting = t.waiting.saturating_sub(1);
                t.running += 1;
                t.kv_blocks += blocks;
            }
            (true, false) => {
                t.running = t.running.saturating_sub(1);
                t.waiting += 1;
                t.kv_blocks = t.kv_blocks.saturating_sub(blocks);
            }
            _ => {}
        }
    }
}

impl SchedulingPolicy for FairPolicy {
    fn name(&self) -> &'static str {
        "fair"
    }

    fn pick_admit(&mut self, waiting: &[RequestInfo<'_>]) -> Option<usize> {
        // Best tenant: smallest counter among tenants with a waiting request within limits.
        let mut best_t: Option<(&str, f64)> = None;
        for w in waiting {
            let name = w.tenant.unwrap_or_default();
            let c = self.tenants.get(name).map_or(0.0, |t| t.node.counter);
            if best_t.is_some_and(|(n, bc)| n == name || bc <= c) {
                continue;
            }
            if self
                .tenants
                .get(name)
                .is_some_and(|t| !self.within_limits(t))
            {
                continue;
            }
            best_t = Some((name, c));
        }
        let (tname, _) = best_t?;
        let tenant = self.tenants.get(tname);
        let ucounter = |u: &str| {
            tenant
                .and_then(|t| t.users.get(u))
                .map_or(0.0, |n| n.counter)
        };
        // Then its user with the smallest counter, then that user's earliest request.
        (0..waiting.len())
            .filter(|&i| waiting[i].tenant.unwrap_or_default() == tname)
            .min_by(|&a, &b| {
                let (ua, ub) = (
                    waiting[a].user.unwrap_or_default(),
                    waiting[b].user.unwrap_or_default(),
                );
                ucounter(ua)
                    .total_cmp(&ucounter(ub))
                    .then(waiting[a].arrival.cmp(&waiting[b].arrival))
            })
    }

    fn pick_preempt(&mut self, running: &[RequestInfo<'_>]) -> usize {
        // Tenant whose share of the candidates' blocks most exceeds its weight share.
        let mut blocks: HashMap<&str, usize> = HashMap::new();
        for r in running {
            *blocks.entry(r.tenant.unwrap_or_default()).or_default() += r.blocks;
        }
        let weight = |n: &str| self.tenants.get(n).map_or(1.0, |t| t.node.weight);
        let total_b = blocks.values().sum::<usize>().max(1) as f64;
        let total_w: f64 = blocks.keys().map(|n| weight(n)).sum();
        let over = |n: &str| blocks[n] as f64 / total_b - weight(n) / total_w;
        let victim_t = blocks
            .keys()
            .copied()
            .max_by(|a, b| over(a).total_cmp(&over(b)).then(b.cmp(a)))
            .unwrap_or_default();
        let ucounter = |r: &RequestInfo<'_>| {
            self.tenants
                .get(victim_t)
                .and_then(|t| t.users.get(r.user.unwrap_or_default()))
                .map_or(0.0, |n| n.counter)
        };
        (0..running.len())
            .filter(|&i| running[i].tenant.unwrap_or_default() == victim_t)
            .max_by(|&a, &b| {
                ucounter(&running[a])
                    .total_cmp(&ucounter(&running[b]))
                    .then(running[a].arrival.cmp(&running[b].arrival))
            })
            .unwrap_or(0)
    }

    fn accepts(&self, tenant: Option<&str>) -> bool {
        let Some(t) = self.tenants.get(tenant.unwrap_or_default()) else {
            return true;
        };
        t.limits.max_queued.is_none_or(|m| t.waiting < m)
    }

    fn on_arrive(&mut self, req: &RequestInfo<'_>) {
        let (tname, uname) = (key(req.tenant), key(req.user));
        self.tenant_mut(&tname);
        let t = &self.tenants[&tname];
        if t.node.active == 0 {
            let nodes = self.tenants.iter().map(|(k, t)| (k, &t.node));
            let c = lift(nodes, &tname, t.node.counter, self.floor);
            self.tenant_mut(&tname).node.counter = c;
        }
        let t = self.tenant_mut(&tname);
        t.users.entry(uname.clone()).or_insert_with(|| Node {
            weight: 1.0,
            ..Node::default()
        });
        if t.users[&uname].active == 0 {
            let c = lift(
                t.users.iter(),
                &uname,
                t.users[&uname].counter,
                t.user_floor,
            );
            if let Some(u) = t.users.get_mut(&uname) {
                u.counter = c;
            }
        }
        t.node.active += 1;
        t.waiting += 1;
        if let Some(u) = t.users.get_mut(&uname) {
            u.active += 1;
        }
        self.reqs.insert(req.id, (tname, uname, false));
    }

    fn on_step(&mut self, running: &[RequestInfo<'_>], total_blocks: usize) {
        self.total_blocks = total_blocks;
        for t in self.tenants.values_mut() {
            t.kv_blocks = 0;
        }
        for r in running {
            self.tenant_mut(r.tenant.unwrap_or_default()).kv_blocks += r.blocks;
        }
    }

    fn on_admit(&mut self, req: &RequestInfo<'_>) {
        self.set_running(req.id, true, req.blocks);
        if req.preemptions == 0 {
            let uncached = req.prompt_tokens.saturating_sub(req.cache_hit_tokens);
            let cost = self.cfg.w_in * uncached as f64;
            let (tname, uname) = (key(req.tenant), key(req.user));
            self.charge(&tname, &uname, cost);
            self.tenant_mut(&tname).prompt_tokens += uncached as u64;
        }
    }

    fn on_compute(&mut self, req: &RequestInfo<'_>, _prompt_tokens: usize, generated: usize) {
        if generated == 0 {
            return;
        }
        let (tname, uname) = (key(req.tenant), key(req.user));
        self.charge(&tname, &uname, self.cfg.w_out * generated as f64);
        self.tenant_mut(&tname).generated_tokens += generated as u64;
    }

    fn on_preempt(&mut self, req: &RequestInfo<'_>) {
        // `req.blocks` is 0 by now; the block tally is refreshed at the next step.
        self.set_running(req.id, false, 0);
    }

    fn on_finish(&mut self, req: &RequestInfo<'_>) {
        let Some((tname, uname, running)) = self.reqs.remove(&req.id) else {
            return;
        };
        let any_other_active = self
            .tenants
            .iter()
            .any(|(k, t)| *k != tname && t.node.active > 0);
        let t = self.tenant_mut(&tname);
        if running {
            t.running = t.running.saturating_sub(1);
            t.kv_blocks = t.kv_blocks.saturating_sub(req.blocks);
        } else {
            t.waiting = t.waiting.saturating_sub(1);
        }
        t.node.active = t.node.active.saturating_sub(1);
        let mut last_user = None;
        if let Some(u) = t.users.get_mut(&uname) {
            u.active = u.active.saturating_sub(1);
            if u.active == 0 {
                last_user = Some(u.counter);
            }
        }
        if let Some(c) = last_user {
            if t.users.values().all(|u| u.active == 0) {
                t.user_floor = t.user_floor.max(c);
            }
        }
        let (active, counter) = (t.node.active, t.node.counter);
        if active == 0 && !any_other_active {
            self.floor = self.floor.max(counter);
        }
    }

    fn tenant_stats(&self) -> Vec<TenantStats> {
        let mut v: Vec<TenantStats> = self
            .tenants
            .iter()
            .map(|(name, t)| TenantStats {
                name: name.clone(),
                weight: t.node.weight,
                virtual_counter: t.node.counter,
                service: t.service,
                prompt_tokens: t.prompt_tokens,
                generated_tokens: t.generated_tokens,
                waiting: t.waiting,
                running: t.running,
                kv_blocks: t.kv_blocks,
                users: t.users.len(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests;
