//! The client commands: each builds one request through `purser-client`,
//! sends it to a running server and prints the JSON answer (stdout on 2xx,
//! stderr otherwise). No logic beyond building the request.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use purser_client::{
    Capture, Charge, Client, ClientError, Cost, ListQuery, NewAccount, NewApiKey, NewGrant,
    NewHold, PurchaseAction, Reply, Reversal, TierChange,
};

/// Where the server is and who is asking.
#[derive(Debug, Args)]
pub struct Connection {
    /// Base URL of the purser server.
    #[arg(
        long,
        global = true,
        env = "PURSER_URL",
        default_value = "http://127.0.0.1:8787"
    )]
    pub(crate) url: String,
    /// API key sent as `Authorization: Bearer <key>`.
    #[arg(long, global = true, env = "PURSER_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
}

/// Commands that talk to a running server.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, read, list accounts; change an account's tier.
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Charge an account for a task or an amount of credits.
    Usage(UsageArgs),
    /// Show an account's balance.
    Balance {
        /// The account id.
        account: String,
    },
    /// List, issue and void grants.
    Grants {
        #[command(subcommand)]
        command: GrantsCommand,
    },
    /// Place, capture, release and read holds.
    Holds {
        #[command(subcommand)]
        command: HoldsCommand,
    },
    /// Buy packages and settle purchases.
    Purchases {
        #[command(subcommand)]
        command: PurchasesCommand,
    },
    /// List an account's journal entries, newest first.
    Transactions(TransactionsArgs),
    /// Create, list and revoke API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Reverse charges.
    Debits {
        #[command(subcommand)]
        command: DebitsCommand,
    },
    /// List, read and resend events.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Manage webhook endpoints.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List events, newest first.
    List {
        /// Only this type (credits.low, purchase.completed, …).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only this account's.
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show an event.
    Get { id: String },
    /// Deliver an event again now (to every subscribed endpoint, or one).
    Resend {
        id: String,
        #[arg(long)]
        endpoint: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Register an endpoint; its secret is shown once.
    Create {
        /// Where deliveries go (absolute http or https URL).
        #[arg(value_name = "URL")]
        endpoint_url: String,
        /// Comma-separated event types (default: all).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List endpoints (without secrets).
    List,
    /// Show an endpoint.
    Get { id: String },
    /// Change an endpoint.
    Update {
        id: String,
        /// A new URL.
        #[arg(long = "endpoint-url", value_name = "URL")]
        endpoint_url: Option<String>,
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, value_parser = ["enabled", "disabled"])]
        status: Option<String>,
    },
    /// A new secret; the old one keeps signing beside it for 24 hours.
    RotateSecret { id: String },
    /// Delete an endpoint.
    Delete { id: String },
    /// An endpoint's recent delivery attempts.
    Deliveries { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Open an account; its first period's budget is granted at once.
    Create {
        /// The operator's id for the account.
        id: String,
        #[arg(long)]
        tier: String,
        #[arg(long)]
        name: Option<String>,
        /// The instant its periods count from (RFC 3339; default: now).
        #[arg(long)]
        anchor: Option<String>,
    },
    /// Show an account.
    Get { id: String },
    /// List accounts, newest first.
    List(PageArgs),
    /// Change an account's tier (upgrades at once, downgrades at the next period).
    Tier {
        id: String,
        tier: String,
        #[arg(long, value_parser = ["full", "prorated", "none"])]
        proration: Option<String>,
    },
}

/// A page of a list.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// 1 to 100 (server default 20).
    #[arg(long)]
    limit: Option<u32>,
    /// The id after which the page starts.
    #[arg(long)]
    starting_after: Option<String>,
}

/// What a charge or hold costs: credits, or a task and a quantity.
#[derive(Debug, Args)]
pub struct CostArgs {
    /// An amount of credits, e.g. 1.5.
    #[arg(long, conflicts_with_all = ["task", "quantity"], required_unless_present = "task")]
    credits: Option<String>,
    /// A task of the rate card, with --quantity.
    #[arg(long, requires = "quantity")]
    task: Option<String>,
    /// How many units of the task.
    #[arg(long, requires = "task")]
    quantity: Option<String>,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The account to charge.
    account: String,
    #[command(flatten)]
    cost: CostArgs,
    /// The member of the workspace who used it.
    #[arg(long)]
    member: Option<String>,
    #[arg(long, value_parser = ["strict", "record"])]
    mode: Option<String>,
    /// Makes a retry of this command change nothing.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// List an account's grants.
    List { account: String },
    /// Give an account credits.
    Create {
        account: String,
        #[arg(long)]
        credits: String,
        #[arg(long)]
        reason: String,
        /// RFC 3339.
        #[arg(long)]
        expires_at: Option<String>,
        #[arg(long, value_parser = ["promo", "package"])]
        kind: Option<String>,
    },
    /// Void a grant's free remainder.
    Void { grant_id: String },
}

#[derive(Debug, Subcommand)]
pub enum HoldsCommand {
    /// Reserve credits for a long job.
    Create {
        account: String,
        #[command(flatten)]
        cost: CostArgs,
        /// 1 to 86400 (server default 900).
        #[arg(long)]
        ttl_seconds: Option<i64>,
    },
    /// Charge the actual amount from a hold (default: all of it).
    Capture {
        hold_id: String,
        #[arg(long, conflicts_with = "quantity")]
        credits: Option<String>,
        #[arg(long)]
        quantity: Option<String>,
    },
    /// Return a hold's credits.
    Release { hold_id: String },
    /// Show a hold.
    Get { hold_id: String },
}

#[derive(Debug, Subcommand)]
pub enum PurchasesCommand {
    /// Start buying a package (pending until completed).
    Create {
        account: String,
        #[arg(long)]
        package: String,
    },
    /// List an account's purchases.
    List { account: String },
    /// Payment confirmed: grant the package's credits.
    Complete { purchase_id: String },
    /// Payment failed.
    Fail { purchase_id: String },
    /// Cancel a pending purchase.
    Cancel { purchase_id: String },
    /// Refund a completed purchase; its unused credits are voided.
    Refund { purchase_id: String },
}

#[derive(Debug, Args)]
pub struct TransactionsArgs {
    account: String,
    /// Only these types, comma-separated (debit, grant, hold, …).
    #[arg(long = "type")]
    kind: Option<String>,
    #[command(flatten)]
    page: PageArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key; its secret is shown once.
    Create {
        /// Comma-separated, among admin, usage, read.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// List API keys (without secrets).
    List,
    /// Revoke an API key.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum DebitsCommand {
    /// Give a charge's credits back (default: all not yet reversed).
    Reverse {
        debit_id: String,
        #[arg(long)]
        credits: Option<String>,
    },
}

/// Runs one client command: exit 0 on a 2xx answer, 1 otherwise.
pub fn run(connection: Connection, command: ClientCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(&connection.url, connection.api_key.unwrap_or_default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = runtime
        .block_on(send(&client, command))
        .with_context(|| format!("asking {}", connection.url))?;
    let text = serde_json::to_string_pretty(&reply.body)?;
    if reply.is_success() {
        println!("{text}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{text}");
        Ok(ExitCode::FAILURE)
    }
}

async fn send(client: &Client, command: ClientCommand) -> Result<Reply, ClientError> {
    match command {
        ClientCommand::Accounts { command } => accounts(client, command).await,
        ClientCommand::Usage(args) => usage(client, args).await,
        ClientCommand::Balance { account } => client.balance(&account).await,
        ClientCommand::Grants { command } => grants(client, command).await,
        ClientCommand::Holds { command } => holds(client, command).await,
        ClientCommand::Purchases { command } => purchases(client, command).await,
        ClientCommand::Transactions(args) => transactions(client, args).await,
        ClientCommand::Keys { command } => keys(client, command).await,
        ClientCommand::Debits {
            command: DebitsCommand::Reverse { debit_id, credits },
        } => client.reverse_debit(&debit_id, &Reversal { credits }).await,
        ClientCommand::Events { command } => events(client, command).await,
        ClientCommand::Webhooks { command } => webhooks(client, command).await,
    }
}

async fn events(client: &Client, command: EventsCommand) -> Result<Reply, ClientError> {
    match command {
        EventsCommand::List {
            kind,
            account,
            page,
        } => {
            let query = page.query().with("type", kind).with("account", account);
            client
                .get(&format!("/v1/events{}", query.to_query_string()))
                .await
        }
        EventsCommand::Get { id } => client.get(&format!("/v1/events/{id}")).await,
        EventsCommand::Resend { id, endpoint } => {
            let mut body = serde_json::Map::new();
            if let Some(endpoint) = endpoint {
                body.insert("endpoint".into(), endpoint.into());
            }
            client.post(&format!("/v1/events/{id}/resend"), &body).await
        }
    }
}

async fn webhooks(client: &Client, command: WebhooksCommand) -> Result<Reply, ClientError> {
    match command {
        WebhooksCommand::Create {
            endpoint_url,
            events,
            description,
        } => {
            let mut body = serde_json::Map::new();
            body.insert("url".into(), endpoint_url.into());
            if !events.is_empty() {
                body.insert("events".into(), events.into());
            }
            if let Some(description) = description {
                body.insert("description".into(), description.into());
            }
            client.post("/v1/webhook_endpoints", &body).await
        }
        WebhooksCommand::List => client.get("/v1/webhook_endpoints").await,
        WebhooksCommand::Get { id } => client.get(&format!("/v1/webhook_endpoints/{id}")).await,
        WebhooksCommand::Update {
            id,
            endpoint_url: url,
            events,
            description,
            status,
        } => {
            let mut body = serde_json::Map::new();
            for (name, value) in [
                ("url", url),
                ("description", description),
                ("status", status),
            ] {
                if let Some(value) = value {
                    body.insert(name.into(), value.into());
                }
            }
            if let Some(events) = events {
                body.insert("events".into(), events.into());
            }
            client
                .post(&format!("/v1/webhook_endpoints/{id}"), &body)
                .await
        }
        WebhooksCommand::RotateSecret { id } => {
            client
                .post(
                    &format!("/v1/webhook_endpoints/{id}/rotate_secret"),
                    &serde_json::Map::new(),
                )
                .await
        }
        WebhooksCommand::Delete { id } => {
            client
                .send("DELETE", &format!("/v1/webhook_endpoints/{id}"), None, None)
                .await
        }
        WebhooksCommand::Deliveries { id } => {
            client
                .get(&format!("/v1/webhook_endpoints/{id}/deliveries"))
                .await
        }
    }
}

async fn accounts(client: &Client, command: AccountsCommand) -> Result<Reply, ClientError> {
    match command {
        AccountsCommand::Create {
            id,
            tier,
            name,
            anchor,
        } => {
            let account = NewAccount {
                id,
                tier,
                name,
                anchor,
            };
            client.create_account(&account).await
        }
        AccountsCommand::Get { id } => client.account(&id).await,
        AccountsCommand::List(page) => client.accounts(&page.query()).await,
        AccountsCommand::Tier {
            id,
            tier,
            proration,
        } => {
            let change = TierChange { tier, proration };
            client.change_tier(&id, &change).await
        }
    }
}

async fn usage(client: &Client, args: UsageArgs) -> Result<Reply, ClientError> {
    let charge = Charge {
        cost: args.cost.into(),
        member: args.member,
        mode: args.mode,
    };
    client
        .charge(&args.account, &charge, args.idempotency_key.as_deref())
        .await
}

async fn grants(client: &Client, command: GrantsCommand) -> Result<Reply, ClientError> {
    match command {
        GrantsCommand::List { account } => client.grants(&account).await,
        GrantsCommand::Create {
            account,
            credits,
            reason,
            expires_at,
            kind,
        } => {
            let grant = NewGrant {
                credits,
                reason,
                kind,
                expires_at,
            };
            client.issue_grant(&account, &grant).await
        }
        GrantsCommand::Void { grant_id } => client.void_grant(&grant_id).await,
    }
}

async fn holds(client: &Client, command: HoldsCommand) -> Result<Reply, ClientError> {
    match command {
        HoldsCommand::Create {
            account,
            cost,
            ttl_seconds,
        } => {
            let hold = NewHold {
                cost: cost.into(),
                ttl_seconds,
            };
            client.place_hold(&account, &hold).await
        }
        HoldsCommand::Capture {
            hold_id,
            credits,
            quantity,
        } => {
            let capture = Capture { credits, quantity };
            client.capture_hold(&hold_id, &capture).await
        }
        HoldsCommand::Release { hold_id } => client.release_hold(&hold_id).await,
        HoldsCommand::Get { hold_id } => client.hold(&hold_id).await,
    }
}

async fn purchases(client: &Client, command: PurchasesCommand) -> Result<Reply, ClientError> {
    let (purchase_id, action) = match command {
        PurchasesCommand::Create { account, package } => {
            return client.create_purchase(&account, &package).await;
        }
        PurchasesCommand::List { account } => return client.purchases(&account).await,
        PurchasesCommand::Complete { purchase_id } => (purchase_id, PurchaseAction::Complete),
        PurchasesCommand::Fail { purchase_id } => (purchase_id, PurchaseAction::Fail),
        PurchasesCommand::Cancel { purchase_id } => (purchase_id, PurchaseAction::Cancel),
        PurchasesCommand::Refund { purchase_id } => (purchase_id, PurchaseAction::Refund),
    };
    client.purchase_action(&purchase_id, action).await
}

async fn transactions(client: &Client, args: TransactionsArgs) -> Result<Reply, ClientError> {
    let query = args.page.query().with("type", args.kind);
    client
        .transactions(&args.account, &query.to_query_string())
        .await
}

async fn keys(client: &Client, command: KeysCommand) -> Result<Reply, ClientError> {
    match command {
        KeysCommand::Create { scopes } => client.create_api_key(&NewApiKey { scopes }).await,
        KeysCommand::List => client.api_keys().await,
        KeysCommand::Revoke { id } => client.revoke_api_key(&id).await,
    }
}

impl PageArgs {
    fn query(&self) -> ListQuery {
        ListQuery::new()
            .with("limit", self.limit)
            .with("starting_after", self.starting_after.as_ref())
    }
}

impl From<CostArgs> for Cost {
    /// clap guarantees credits, or both task and quantity.
    fn from(args: CostArgs) -> Cost {
        match (args.credits, args.task, args.quantity) {
            (Some(credits), _, _) => Cost::credits(credits),
            (None, task, quantity) => {
                Cost::task(task.unwrap_or_default(), quantity.unwrap_or_default())
            }
        }
    }
}
