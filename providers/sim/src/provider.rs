//! The provider side: [`Provider`] for [`SimCloud`], written the way a provider
//! for a real cloud is: describe, decide, call, then poll until done.

use async_trait::async_trait;
use byoc_provider::{CallContext, Observed, Outputs, Plan, PlanSummary, Provider, ProviderError, ResourceSpec};

use crate::SimCloud;
use crate::record::{Address, Live, ResourceStatus, deleted_outputs};

/// What an `apply` does after a describe.
enum Next {
    /// Wait for the cloud's work on resource `id` to finish, then look again.
    Wait(String),
    /// Another resource took the address between the describe and the create.
    DescribeAgain,
    Done(Outputs),
}

/// What a wait waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    Active,
    Gone,
}

#[async_trait]
impl Provider for SimCloud {
    fn cloud(&self) -> &'static str {
        "sim"
    }

    async fn observe(&self, ctx: &CallContext<'_>, spec: &ResourceSpec) -> Result<Option<Observed>, ProviderError> {
        spec.validate()?;
        let live = self.describe(ctx, &Address::of(spec)).await?;
        Ok(live.map(|live| Observed {
            outputs: live.outputs(),
            spec: live.spec,
        }))
    }

    async fn apply(&self, ctx: &CallContext<'_>, spec: &ResourceSpec) -> Result<Outputs, ProviderError> {
        spec.validate()?;
        let address = Address::of(spec);
        loop {
            self.announce_describe(ctx, &address).await?;
            let next = {
                let _decisions = self.decision_lock(&address).await;
                match self.describe_announced(ctx, &address).await? {
                    None => match self.create(ctx, spec).await? {
                        Some(live) => Next::Wait(live.stored.id),
                        None => Next::DescribeAgain,
                    },
                    Some(live) => self.converge(ctx, spec, live).await?,
                }
            };
            match next {
                Next::Done(outputs) => return Ok(outputs),
                Next::Wait(id) => {
                    self.wait(ctx, &address, &id, Goal::Active).await?;
                }
                Next::DescribeAgain => {}
            }
        }
    }

    async fn delete(&self, ctx: &CallContext<'_>, spec: &ResourceSpec) -> Result<Outputs, ProviderError> {
        spec.validate()?;
        let address = Address::of(spec);
        self.announce_describe(ctx, &address).await?;
        let id = {
            let _decisions = self.decision_lock(&address).await;
            let Some(live) = self.describe_announced(ctx, &address).await? else {
                return Ok(deleted_outputs(&address, None));
            };
            if live.status != ResourceStatus::Deleting {
                self.request_delete(ctx, &address, live.id()).await?;
            }
            live.stored.id
        };
        self.wait(ctx, &address, &id, Goal::Gone).await?;
        Ok(deleted_outputs(&address, Some(&id)))
    }
}

impl SimCloud {
    /// Decides what to do about an existing resource for `apply`.
    async fn converge(&self, ctx: &CallContext<'_>, spec: &ResourceSpec, live: Live) -> Result<Next, ProviderError> {
        let address = Address::of(spec);
        match live.status {
            // A create or update is under way (ours from before a crash, or
            // another operation's): let it finish, then compare.
            ResourceStatus::Creating | ResourceStatus::Updating => return Ok(Next::Wait(live.stored.id)),
            ResourceStatus::Deleting | ResourceStatus::Gone => {
                return Err(ProviderError::Conflict {
                    message: format!(
                        "{address} (id {}) is being deleted; apply it again once the deletion is done",
                        live.id()
                    ),
                });
            }
            ResourceStatus::Active => {}
        }
        let plan = Plan::for_apply(spec, Some(&live.spec));
        match plan.summary {
            PlanSummary::NoChange | PlanSummary::Create | PlanSummary::Delete => Ok(Next::Done(live.outputs())),
            PlanSummary::Replace => Err(replacement_conflict(&address, &plan)),
            PlanSummary::Update => {
                self.update(ctx, live.id(), spec).await?;
                Ok(Next::Wait(live.stored.id))
            }
        }
    }

    /// Describes the resource every poll interval, reporting progress, until
    /// resource `id` is active or gone (`goal`).
    async fn wait(&self, ctx: &CallContext<'_>, address: &Address, id: &str, goal: Goal) -> Result<(), ProviderError> {
        loop {
            let live = self.describe(ctx, address).await?.filter(|live| live.id() == id);
            let Some(live) = live else {
                return match goal {
                    Goal::Gone => {
                        ctx.hooks
                            .progress("deleting", &format!("{address} (id {id}) is deleted"), Some(100));
                        Ok(())
                    }
                    Goal::Active => Err(ProviderError::Conflict {
                        message: format!("{address} (id {id}) was deleted while waiting for it to become active"),
                    }),
                };
            };
            match (goal, live.status) {
                (Goal::Active, ResourceStatus::Active) => {
                    ctx.hooks
                        .progress("active", &format!("{address} (id {id}) is active"), Some(100));
                    return Ok(());
                }
                (Goal::Active, ResourceStatus::Deleting) => {
                    return Err(ProviderError::Conflict {
                        message: format!("{address} (id {id}) is being deleted while waiting for it to become active"),
                    });
                }
                (_, status) => {
                    let percent = live.stored.percent_at(self.clock().now()).min(99);
                    let message = format!("{address} (id {id}) is {status}");
                    ctx.hooks.progress(status.as_str(), &message, Some(percent));
                }
            }
            tokio::time::sleep(self.config().poll_interval).await;
        }
    }
}

/// The error for a change that only a replacement could make.
fn replacement_conflict(address: &Address, plan: &Plan) -> ProviderError {
    let fields: Vec<String> = plan
        .changes
        .iter()
        .filter(|c| c.requires_replacement)
        .map(|c| {
            let show = |v: &Option<serde_json::Value>| v.as_ref().map_or("(none)".to_string(), |v| v.to_string());
            format!("{} ({} -> {})", c.path, show(&c.from), show(&c.to))
        })
        .collect();
    ProviderError::Conflict {
        message: format!(
            "{address}: changing {} requires replacing the resource, and the agent does not replace \
             resources implicitly; delete it and apply it again to recreate it",
            fields.join(", ")
        ),
    }
}
