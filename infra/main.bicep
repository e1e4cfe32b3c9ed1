// voicebridge on Azure Container Apps: one deployment from an (almost) empty resource
// group to a webhook that answers phone calls. Runbook: docs/deploy.md.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json \
//     -p containerImage=<acr>.azurecr.io/voicebridge:<tag> registryName=<acr>
//
//   (plus callUrlKeys=... scaleMetricToken=..., required @secure() values: docs/deploy.md)
//
// Creates: Log Analytics + Application Insights, a Container Apps environment, a
// user-assigned identity, a Key Vault (RBAC) with the app's secrets, Azure Managed Redis
// (the nodes' shared call state, Entra ID access for the identity), the Container App
// (2 or more replicas, scaled on live calls), role assignments (Foundry, ACS, Key Vault,
// ACR), an Event Grid system topic on ACS and an IncomingCall subscription to
// /api/incoming-call. ACS and the Foundry resource are created, or existing ones are used
// (createAcs / createFoundry = false).
// Prerequisite not created here: the container registry holding the image (the image
// must exist before the app starts; `az acr build` pushes it).
//
// Every setting the app reads (voicebridge.config.Settings) is an env var below, with
// the app's default as the parameter default; '' means "not set" (the app's default
// or "off" applies, Settings ignores empty values). tests/infra/test_bicep.py keeps
// this list and the defaults in step with Settings.
//
// Not compiled here: no Bicep CLI is available where this was written; see
// docs/deploy.md "What was and was not verified here".

targetScope = 'resourceGroup'

// ============================================================== naming and placement

@description('Short lowercase base for resource names.')
@minLength(3)
@maxLength(14)
param baseName string = 'voicebridge'

@description('Region for the Container Apps environment, monitoring and Key Vault.')
param location string = resourceGroup().location

param tags object = {
  app: 'voicebridge'
}

var suffix = uniqueString(subscription().id, resourceGroup().id, baseName)

// ============================================================== image and container app

@description('Full image reference, e.g. myacr.azurecr.io/voicebridge:0.1.0 (built with `az acr build`).')
param containerImage string

@description('Existing Azure Container Registry in THIS resource group to pull from with the app identity (AcrPull). "" = public image.')
param registryName string = ''

@description('Container App name; also the first label of its public host name.')
@maxLength(32)
param appName string = baseName

@description('vCPU per replica (string, e.g. "0.5", "1.0").')
param cpuCores string = '1.0'

@description('Memory per replica; must pair with cpuCores (e.g. 1.0 -> 2Gi).')
param memory string = '2Gi'

// ============================================================== scale-out (docs/deploy.md "Scale-out")

@description('Replicas always running. At least 2: one replica restarting or draining leaves another to answer calls and take migrated ones; never 0 (Event Grid must reach a live app within seconds).')
@minValue(2)
param minReplicas int = 2

@description('Replica ceiling: size it to peak calls / callsPerReplica plus headroom. Each replica is cpuCores of the environment\'s core quota (100 by default).')
@minValue(2)
@maxValue(1000)
param maxReplicas int = 30

@description('Scale rule target: live calls per replica. ~100 per core measured offline without TLS; 60 leaves room for uneven routing, start-up lag and slow VMs.')
@minValue(1)
param callsPerReplica int = 60

@description('WORKERS: `voicebridge serve` processes per replica, each a node. Keep 1 on 1-vCPU Consumption replicas; more only for bigger replicas.')
@minValue(1)
@maxValue(64)
param workersPerReplica int = 1

@description('Azure Managed Redis SKU (shared call state).')
param redisSku string = 'Balanced_B1'

@description('REDIS_AUTH: entra = the app identity (access keys disabled on the database); key = an access key in Key Vault as REDIS_PASSWORD.')
@allowed([
  'entra'
  'key'
])
param redisAuth string = 'entra'

@description('DRAIN_MODE on SIGTERM: wait = live calls finish here (up to drainGraceS); migrate = move them to other replicas by restarting ACS media streaming (unverified on real ACS: docs/deploy.md).')
@allowed([
  'wait'
  'migrate'
])
param drainMode string = 'wait'

@description('DRAIN_ROUTE_SETTLE_S: readiness stays 503 this long before calls move, so the ingress stops sending new sockets (readiness period 5 s x failureThreshold 2, plus margin).')
@minValue(0)
param drainRouteSettleS int = 12

@description('DRAIN_MIGRATE_DEADLINE_S: how long moving calls may take (migrate mode); what is left then waits like wait mode.')
@minValue(0)
param drainMigrateDeadlineS int = 20

@description('NODE_HEARTBEAT_S: each node\'s heartbeat in Redis.')
@minValue(1)
param nodeHeartbeatS int = 5

@description('OWNER_LOST_AFTER_S: a call whose owner is silent this long is checked with ACS (more than twice nodeHeartbeatS).')
@minValue(3)
param ownerLostAfterS int = 30

@allowed([
  'Single'
  'Multiple'
])
param revisionsMode string = 'Single'

@description('Optional revision suffix (lowercase letters, digits, dashes). A new suffix forces a new revision, which is how replicas pick up a changed Key Vault secret (a secret change alone does not restart them).')
param revisionSuffix string = ''

@description('Seconds added for uvicorn and process exit after the drain: terminationGracePeriodSeconds = drainRouteSettleS + drainMigrateDeadlineS + drainGraceS + shutdownMarginS (107 s by default; keep it at or under 120 s until the platform is seen honouring more).')
@minValue(5)
param shutdownMarginS int = 15

@description('Public https base URL if a custom domain fronts the app; "" = https://<appName>.<environment default domain>.')
param customPublicBaseUrl string = ''

// ============================================================== Azure Communication Services

@description('Create a new ACS resource (true) or use an existing one named acsName (false).')
param createAcs bool = true

param acsName string = 'acs-${baseName}-${uniqueString(subscription().id, resourceGroup().id, baseName)}'

@description('Resource group of the ACS resource (the Event Grid system topic goes there too).')
param acsResourceGroup string = resourceGroup().name

@description('Where a NEW ACS resource keeps data at rest (create-only).')
param acsDataLocation string = 'United States'

@description('connectionString: ACS_CONNECTION_STRING from Key Vault (HMAC, exercised locally). managedIdentity: ACS_ENDPOINT + the app identity (role below; least privilege unverified).')
@allowed([
  'connectionString'
  'managedIdentity'
])
param acsAuth string = 'connectionString'

@description('Role granted on ACS when acsAuth = managedIdentity. Default Contributor; candidate narrower role: 09976791-48a7-449e-bb21-39d1a415f350 (Communication and Email Service Owner). Not verified (protocols.md §9 q7).')
param acsRoleDefinitionId string = 'b24988ac-6180-42a0-ab88-20f7382dd24c'

@description('Create the Event Grid system topic for ACS (only one may exist per ACS resource; false = reuse eventGridSystemTopicName).')
param createEventGridSystemTopic bool = true

param eventGridSystemTopicName string = '${acsName}-events'

param eventGridSubscriptionName string = '${appName}-incoming-call'

@description('Optional shared secret Event Grid appends as ?secret=... to the webhook URL (EVENTGRID_SHARED_SECRET). Generate: openssl rand -base64 32')
@secure()
param eventGridSharedSecret string = ''

@description('Entra-protected delivery: tenant id of the app registration ("" = off). Sets EVENTGRID_ENTRA_TENANT_ID.')
param eventGridEntraTenantId string = ''

@description('Entra-protected delivery: app id or app id URI Event Grid gets tokens for. Sets EVENTGRID_ENTRA_AUDIENCE.')
param eventGridEntraAudience string = ''

// ============================================================== Foundry / Voice Live

@description('Create a new Foundry (AI Services) resource (true) or use an existing one named foundryName (false).')
param createFoundry bool = true

@description('Foundry resource name; also its custom subdomain (<name>.services.ai.azure.com).')
param foundryName string = 'ais-${baseName}-${uniqueString(subscription().id, resourceGroup().id, baseName)}'

param foundryResourceGroup string = resourceGroup().name

@description('Region of a NEW Foundry resource: must be a Voice Live region (docs/deploy.md).')
param foundryLocation string = location

@description('entra: managed identity (required for agent mode). key: VOICELIVE_API_KEY from Key Vault (model mode only).')
@allowed([
  'entra'
  'key'
])
param voiceLiveAuth string = 'entra'

@description('Voice Live endpoint override; "" = https://<foundry subdomain>.services.ai.azure.com/')
param voiceLiveEndpoint string = ''

// ============================================================== app settings (Settings defaults)
// Voice Live
@description('VOICELIVE_MODEL: model mode (e.g. gpt-realtime). Leave "" for agent mode.')
param voiceliveModel string = 'gpt-realtime'
param voiceliveApiVersion string = '2026-07-15'
@description('AGENT_NAME: agent mode (Entra ID only); also set projectName and voiceliveModel = "".')
param agentName string = ''
param projectName string = ''
param agentVersion string = ''
param conversationId string = ''
param foundryResourceOverride string = ''
param agentAuthenticationIdentityClientId string = ''
@description('Agent mode: also send voice, turn detection, noise suppression, echo cancellation and transcription. Off: the agent\'s stored configuration owns them (a conflicting session.update ends the session).')
param agentSessionOverrides bool = false
param voiceName string = 'en-US-AvaMultilingualNeural'
param instructions string = 'You are a friendly phone assistant. Keep answers short and conversational; the caller is on a phone line.'
param voiceliveConnectTimeoutS int = 10

// call control (docs/call-control.md); fractional numbers are strings (Bicep has no floats)
@description('CALL_TOOLS: tools the model may call (end_call, transfer_to_human). Transfer is declared only when transferTargets is set.')
param callTools string = 'end_call,transfer_to_human'
@description('TRANSFER_TARGETS: reason=target pairs (E.164 number or ACS user id), e.g. default=+15551234567,billing=+15557654321. Empty: no transfers.')
param transferTargets string = ''
@description('TRANSFER_ANNOUNCEMENT: said before a transfer.')
param transferAnnouncement string = 'Connecting you to a person now. Please stay on the line.'
@description('TOOL_FILLER_TEXT: said when a tool runs longer than toolFillerAfterS.')
param toolFillerText string = 'One moment, please.'
@description('TOOL_FILLER_AFTER_S (seconds).')
param toolFillerAfterS string = '1.5'
@description('TOOL_TIMEOUT_S (seconds).')
param toolTimeoutS int = 30
@description('DTMF_INTER_DIGIT_TIMEOUT_S (seconds).')
param dtmfInterDigitTimeoutS int = 3
@description('DTMF_MAX_DIGITS.')
param dtmfMaxDigits int = 20
@description('DTMF_ACTIONS: key=action pairs acting without the model, e.g. 0=transfer,9=end. Empty: none.')
param dtmfActions string = ''
@description('NO_INPUT_REPROMPT_S: seconds of caller silence before a re-prompt (0 = off).')
param noInputRepromptS int = 8
@description('NO_INPUT_MAX_REPROMPTS, then goodbye and hang-up.')
param noInputMaxReprompts int = 2
@description('NO_INPUT_PROMPT: the re-prompt said verbatim; empty: the model checks in.')
param noInputPrompt string = ''
@description('Estimated cost, USD per million input text tokens.')
param priceInputTextPerM string = '4.0'
@description('USD per million input audio tokens.')
param priceInputAudioPerM string = '32.0'
@description('USD per million cached input tokens.')
param priceInputCachedPerM string = '0.4'
@description('USD per million output text tokens.')
param priceOutputTextPerM string = '16.0'
@description('USD per million output audio tokens.')
param priceOutputAudioPerM string = '64.0'

// reliability (docs/reliability.md)
param voiceliveReconnectBudgetS int = 10
param reconnectBufferS int = 5
param sessionUpdateTimeoutS int = 5
param responseStartTimeoutS int = 4
param responseStallTimeoutS int = 8
param sessionExpiryMarginS int = 30
param acsReconnectGraceS int = 3

// session behaviour
@allowed([
  'llm'
  'text'
  'none'
])
param greetingMode string = 'llm'
param greetingText string = 'Hello, thanks for calling. How can I help you today?'
param greetingInstructions string = ''
param vadType string = 'azure_semantic_vad'
param vadSilenceMs int = 500
param noiseSuppression bool = true
param echoCancellation bool = true
@description('TRANSCRIPTION_MODEL: "" = derived (whisper-1 for gpt-realtime models, azure-speech for agents and other models); "none" = off.')
param transcriptionModel string = ''
param transcriptionLanguage string = ''
@description('INTERIM_RESPONSE as a JSON string, "" = off.')
param interimResponse string = ''

// audio
@allowed([
  16000
  24000
])
param acsAudioRate int = 16000
@allowed([
  16000
  24000
])
param voiceliveAudioRate int = 24000
param pacingLeadMs int = 160
@allowed([
  20
  40
  60
  80
  100
])
param acsOutFrameMs int = 40
param maxTextBytes int = 8192
param maxMessageBytes int = 131072

// security (ACS JWTs, Event Grid)
@description('ACS_JWT_VALIDATION: check the ACS JWT on callbacks and media sockets (audience = the ACS immutable resource id, set automatically).')
param acsJwtValidation bool = true
param acsJwtIssuer string = 'https://acscallautomation.communication.azure.com'
param acsOpenidConfigUrl string = 'https://acscallautomation.communication.azure.com/calling/.well-known/acsopenidconfiguration'
param acsJwksUrl string = ''
param jwtLeewayS int = 60
@description('CALL_URL_KEYS (required): per-call URL token keys "kid:base64key,kid2:base64key2", the first signs, all verify; every replica and revision shares them. Key: openssl rand -base64 32. Pass the same value on every deployment (rotation: docs/security.md "Per-call URLs").')
@secure()
@minLength(1)
param callUrlKeys string
@description('SCALE_METRIC_TOKEN (required): bearer token the scale rule sends to GET /api/scale-metric. openssl rand -hex 32; pass the same value on every deployment.')
@secure()
@minLength(16)
param scaleMetricToken string
@description('CALL_URL_SECRET (deprecated): one HMAC key for per-call URLs, which the app uses only without CALL_URL_KEYS; callUrlKeys is required here, so leave this "".')
@secure()
param callUrlSecret string = ''
param eventgridEntraOpenidConfigUrl string = ''

// profiles and outbound calls (docs/outbound.md)
@description('The profiles file itself (YAML or JSON text; "" = none): per-number profiles. Stored in Key Vault and mounted read-only at /mnt/voicebridge/profiles.yaml, which PROFILES_FILE then names.')
@secure()
param profilesYaml string = ''
@description('PROFILES_FILE: a path in the container (a volume you mount) when profilesYaml is "".')
param profilesFile string = ''
@description('PHONE_NUMBERS: the default profile\'s ACS numbers, comma-separated E.164 (the caller id of its outbound calls).')
param phoneNumbers string = ''
@description('OUTBOUND_API_KEYS: bearer keys of POST /api/calls, comma-separated, each at least 16 characters ("" = none; with no Entra check either the route does not exist). openssl rand -base64 32')
@secure()
param outboundApiKeys string = ''
@description('OUTBOUND_ENTRA_TENANT_ID: accept Entra ID access tokens of this tenant on POST /api/calls ("" = off).')
param outboundEntraTenantId string = ''
@description('OUTBOUND_ENTRA_AUDIENCE: the audience those tokens carry (the API app registration\'s id or id URI).')
param outboundEntraAudience string = ''
@description('OUTBOUND_ENTRA_ROLE: the app role a token must carry (roles claim).')
param outboundEntraRole string = 'Calls.Create'
param outboundEntraOpenidConfigUrl string = ''
@description('OUTBOUND_RATE_PER_MIN: new outbound calls a minute, per process.')
param outboundRatePerMin int = 30
@description('OUTBOUND_MAX_CONCURRENT: outbound calls in progress, per process.')
param outboundMaxConcurrent int = 20
param outboundContextMaxBytes int = 2048
param outboundContextMaxKeys int = 20

// limits
param maxBodyBytes int = 1048576
param maxMediaMessageBytes int = 65536
param maxConcurrentCalls int = 100
param mediaIdleTimeoutS int = 120
param maxCallDurationS int = 3600
@description('DRAIN_GRACE_S: how long live calls may still run on a draining replica (after the settle and migrate steps). 60 here (the app\'s default is 120) keeps terminationGracePeriodSeconds at or under 120 s: the platform killed replicas 60-80 s after SIGTERM on KEDA scale-in in microsoft/azure-container-apps#1824.')
param drainGraceS int = 60

// service
param logDir string = './logs'
@allowed([
  'DEBUG'
  'INFO'
  'WARNING'
  'ERROR'
])
param logLevel string = 'INFO'
@description('json: one JSON object per line (Log Analytics parses it); text: plain lines')
@allowed([
  'json'
  'text'
])
param logFormat string = 'json'

// ============================================================== shared pieces

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${baseName}-${suffix}'
  location: location
  tags: tags
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    workspaceName: 'log-${baseName}-${suffix}'
    appInsightsName: 'appi-${baseName}-${suffix}'
    location: location
    tags: tags
  }
}

module containerEnv 'modules/environment.bicep' = {
  name: 'environment'
  params: {
    name: 'cae-${baseName}-${suffix}'
    location: location
    tags: tags
    workspaceName: monitoring.outputs.workspaceName
  }
}

module acs 'modules/acs.bicep' = {
  name: 'acs'
  scope: resourceGroup(acsResourceGroup)
  params: {
    create: createAcs
    name: acsName
    dataLocation: acsDataLocation
    tags: tags
    grantRole: acsAuth == 'managedIdentity'
    principalId: identity.properties.principalId
    roleDefinitionId: acsRoleDefinitionId
  }
}

module foundry 'modules/foundry.bicep' = {
  name: 'foundry'
  scope: resourceGroup(foundryResourceGroup)
  params: {
    create: createFoundry
    name: foundryName
    location: foundryLocation
    tags: tags
    disableLocalAuth: voiceLiveAuth == 'entra'
    principalId: identity.properties.principalId
  }
}

// Container App secret names (lowercase, digits, dashes) = Key Vault secret names.
var secretNames = {
  voiceLiveApiKey: 'voicelive-api-key'
  acsConnectionString: 'acs-connection-string'
  eventGridSharedSecret: 'eventgrid-shared-secret'
  callUrlSecret: 'call-url-secret'
  callUrlKeys: 'call-url-keys'
  scaleMetricToken: 'scale-metric-token'
  redisUrl: 'redis-url'
  redisPassword: 'redis-password'
  appInsightsConnectionString: 'appinsights-connection-string'
  outboundApiKeys: 'outbound-api-keys'
  profilesYaml: 'profiles-yaml'
}

module redis 'modules/redis.bicep' = {
  name: 'redis'
  params: {
    name: 'amr-${baseName}-${suffix}'
    location: location
    tags: tags
    skuName: redisSku
    principalId: identity.properties.principalId
    accessKeysEnabled: redisAuth == 'key'
  }
}

module vault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: 'kv-${take(baseName, 6)}-${suffix}'
    location: location
    tags: tags
    principalId: identity.properties.principalId
    secretNames: secretNames
    storeAcsConnectionString: acsAuth == 'connectionString'
    acsName: acsName
    acsResourceGroup: acsResourceGroup
    storeVoiceLiveKey: voiceLiveAuth == 'key'
    foundryName: foundryName
    foundryResourceGroup: foundryResourceGroup
    appInsightsName: monitoring.outputs.appInsightsName
    eventGridSharedSecret: eventGridSharedSecret
    callUrlSecret: callUrlSecret
    callUrlKeys: callUrlKeys
    scaleMetricToken: scaleMetricToken
    outboundApiKeys: outboundApiKeys
    profilesYaml: profilesYaml
    redisUrl: redis.outputs.url
    storeRedisKey: redisAuth == 'key'
    redisName: redis.outputs.name
  }
  dependsOn: [
    acs
    foundry
  ]
}

// Only referenced (as a scope) when registryName is set.
resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

// AcrPull (built-in) for the app identity, before the app first pulls its image.
var acrPull = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

resource registryPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(registryName)) {
  name: guid(resourceGroup().id, registryName, identity.id, acrPull)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPull)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ============================================================== the app's configuration

// Known before the app exists (no cycle): the environment's default domain.
var publicBaseUrl = empty(customPublicBaseUrl)
  ? 'https://${appName}.${containerEnv.outputs.defaultDomain}'
  : customPublicBaseUrl
var webhookUrl = '${publicBaseUrl}/api/incoming-call'
// The scale rule polls the app itself: any replica answers from Redis.
var scaleMetricUrl = '${publicBaseUrl}/api/scale-metric'

// Optional secrets, as conditions (a secure value never reaches an env entry).
var outboundKeysSet = !empty(outboundApiKeys)
var profilesMounted = !empty(profilesYaml)
// The profiles file (profilesYaml), mounted from its Container App secret.
var profilesPath = '/mnt/voicebridge/profiles.yaml'

// Secrets: Key Vault references only (keyVaultUrl + identity), never values.
var keyVaultSecrets = concat(
  voiceLiveAuth == 'key'
    ? [
        {
          name: secretNames.voiceLiveApiKey
          keyVaultUrl: '${vault.outputs.vaultUri}secrets/${secretNames.voiceLiveApiKey}'
          identity: identity.id
        }
      ]
    : [],
  acsAuth == 'connectionString'
    ? [
        {
          name: secretNames.acsConnectionString
          keyVaultUrl: '${vault.outputs.vaultUri}secrets/${secretNames.acsConnectionString}'
          identity: identity.id
        }
      ]
    : [],
  !empty(eventGridSharedSecret)
    ? [
        {
          name: secretNames.eventGridSharedSecret
          keyVaultUrl: '${vault.outputs.vaultUri}secrets/${secretNames.eventGridSharedSecret}'
          identity: identity.id
        }
      ]
    : [],
  !empty(callUrlSecret)
    ? [
        {
          name: secretNames.callUrlSecret
          keyVaultUrl: '${vault.outputs.vaultUri}secrets/${secretNames.callUrlSecret}'
          identity: identity.id
        }
      ]
    : [],
  redisAuth == 'key'
    ? [
        {
          name: secretNames.redisPassword
          keyVaultUrl: '${vault.outputs.vaultUri}secrets/${secretNames.redisPassword}'
          identity: identity.id
        }
      ]
    : [],
  outboundKeysSet
    ? [
        {
          name: secretNames.outboundApiKeys
          keyVaultUrl: '${vault.outputs.vaultUri}secrets/${secretNames.outboundApiKeys}'
          identity: identity.id
        }
      ]
    : [],
  profilesMounted
    ? [
        {
          name: secretNames.profilesYaml
          keyVaultUrl: '${vault.outputs.vaultUri}secrets/${secretNames.profilesYaml}'
          identity: identity.id
        }
      ]
    : [],
  [
    {
      name: secretNames.callUrlKeys
      keyVaultUrl: '${vault.outputs.vaultUri}secrets/${secretNames.callUrlKeys}'
      identity: identity.id
    }
    {
      name: secretNames.scaleMetricToken
      keyVaultUrl: '${vault.outputs.vaultUri}secrets/${secretNames.scaleMetricToken}'
      identity: identity.id
    }
    {
      name: secretNames.redisUrl
      keyVaultUrl: '${vault.outputs.vaultUri}secrets/${secretNames.redisUrl}'
      identity: identity.id
    }
    {
      name: secretNames.appInsightsConnectionString
      keyVaultUrl: '${vault.outputs.vaultUri}secrets/${secretNames.appInsightsConnectionString}'
      identity: identity.id
    }
  ]
)

var secretEnv = concat(
  voiceLiveAuth == 'key'
    ? [
        {
          name: 'VOICELIVE_API_KEY'
          secretRef: secretNames.voiceLiveApiKey
        }
      ]
    : [],
  acsAuth == 'connectionString'
    ? [
        {
          name: 'ACS_CONNECTION_STRING'
          secretRef: secretNames.acsConnectionString
        }
      ]
    : [],
  !empty(eventGridSharedSecret)
    ? [
        {
          name: 'EVENTGRID_SHARED_SECRET'
          secretRef: secretNames.eventGridSharedSecret
        }
      ]
    : [],
  !empty(callUrlSecret)
    ? [
        {
          name: 'CALL_URL_SECRET'
          secretRef: secretNames.callUrlSecret
        }
      ]
    : [],
  redisAuth == 'key'
    ? [
        {
          name: 'REDIS_PASSWORD'
          secretRef: secretNames.redisPassword
        }
      ]
    : [],
  outboundKeysSet
    ? [
        {
          name: 'OUTBOUND_API_KEYS'
          secretRef: secretNames.outboundApiKeys
        }
      ]
    : [],
  [
    {
      name: 'CALL_URL_KEYS'
      secretRef: secretNames.callUrlKeys
    }
    {
      name: 'SCALE_METRIC_TOKEN'
      secretRef: secretNames.scaleMetricToken
    }
    {
      name: 'REDIS_URL'
      secretRef: secretNames.redisUrl
    }
    {
      name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
      secretRef: secretNames.appInsightsConnectionString
    }
  ]
)

// Agent mode leaves the session fields an agent stores to the agent (docs/deploy.md).
var agentOwnsSession = !empty(agentName) && !agentSessionOverrides

// Plain settings. Entries whose value is '' are dropped (= not set).
// Deliberately not set in Azure (dev/test only, see tests/infra/test_bicep.py):
// VOICELIVE_BEARER_TOKEN, HOST, PORT, DEBUG_ENDPOINTS, NODE_ID (the default
// <hostname>/<pid> is unique per replica and worker), EXPOSE_NODE_ID.
var plainEnv = [
  // Voice Live
  {
    name: 'VOICELIVE_ENDPOINT'
    value: empty(voiceLiveEndpoint) ? foundry.outputs.endpoint : voiceLiveEndpoint
  }
  {
    name: 'VOICELIVE_MODEL'
    value: voiceliveModel
  }
  {
    name: 'VOICELIVE_API_VERSION'
    value: voiceliveApiVersion
  }
  {
    name: 'AGENT_NAME'
    value: agentName
  }
  {
    name: 'PROJECT_NAME'
    value: projectName
  }
  {
    name: 'AGENT_VERSION'
    value: agentVersion
  }
  {
    name: 'CONVERSATION_ID'
    value: conversationId
  }
  {
    name: 'FOUNDRY_RESOURCE_OVERRIDE'
    value: foundryResourceOverride
  }
  {
    name: 'AGENT_AUTHENTICATION_IDENTITY_CLIENT_ID'
    value: agentAuthenticationIdentityClientId
  }
  {
    name: 'VOICE_NAME'
    value: agentOwnsSession ? '' : voiceName
  }
  {
    name: 'INSTRUCTIONS'
    value: instructions
  }
  {
    name: 'VOICELIVE_CONNECT_TIMEOUT_S'
    value: string(voiceliveConnectTimeoutS)
  }
  // call control
  {
    name: 'CALL_TOOLS'
    value: callTools
  }
  {
    name: 'TRANSFER_TARGETS'
    value: transferTargets
  }
  {
    name: 'TRANSFER_ANNOUNCEMENT'
    value: transferAnnouncement
  }
  {
    name: 'TOOL_FILLER_TEXT'
    value: toolFillerText
  }
  {
    name: 'TOOL_FILLER_AFTER_S'
    value: toolFillerAfterS
  }
  {
    name: 'TOOL_TIMEOUT_S'
    value: string(toolTimeoutS)
  }
  {
    name: 'DTMF_INTER_DIGIT_TIMEOUT_S'
    value: string(dtmfInterDigitTimeoutS)
  }
  {
    name: 'DTMF_MAX_DIGITS'
    value: string(dtmfMaxDigits)
  }
  {
    name: 'DTMF_ACTIONS'
    value: dtmfActions
  }
  {
    name: 'NO_INPUT_REPROMPT_S'
    value: string(noInputRepromptS)
  }
  {
    name: 'NO_INPUT_MAX_REPROMPTS'
    value: string(noInputMaxReprompts)
  }
  {
    name: 'NO_INPUT_PROMPT'
    value: noInputPrompt
  }
  {
    name: 'PRICE_INPUT_TEXT_PER_M'
    value: priceInputTextPerM
  }
  {
    name: 'PRICE_INPUT_AUDIO_PER_M'
    value: priceInputAudioPerM
  }
  {
    name: 'PRICE_INPUT_CACHED_PER_M'
    value: priceInputCachedPerM
  }
  {
    name: 'PRICE_OUTPUT_TEXT_PER_M'
    value: priceOutputTextPerM
  }
  {
    name: 'PRICE_OUTPUT_AUDIO_PER_M'
    value: priceOutputAudioPerM
  }
  // reliability
  {
    name: 'VOICELIVE_RECONNECT_BUDGET_S'
    value: string(voiceliveReconnectBudgetS)
  }
  {
    name: 'RECONNECT_BUFFER_S'
    value: string(reconnectBufferS)
  }
  {
    name: 'SESSION_UPDATE_TIMEOUT_S'
    value: string(sessionUpdateTimeoutS)
  }
  {
    name: 'RESPONSE_START_TIMEOUT_S'
    value: string(responseStartTimeoutS)
  }
  {
    name: 'RESPONSE_STALL_TIMEOUT_S'
    value: string(responseStallTimeoutS)
  }
  {
    name: 'SESSION_EXPIRY_MARGIN_S'
    value: string(sessionExpiryMarginS)
  }
  {
    name: 'ACS_RECONNECT_GRACE_S'
    value: string(acsReconnectGraceS)
  }
  // session behaviour
  {
    name: 'GREETING_MODE'
    value: greetingMode
  }
  {
    name: 'GREETING_TEXT'
    value: greetingText
  }
  {
    name: 'GREETING_INSTRUCTIONS'
    value: greetingInstructions
  }
  {
    name: 'VAD_TYPE'
    value: agentOwnsSession ? '' : vadType
  }
  {
    name: 'VAD_SILENCE_MS'
    value: agentOwnsSession ? '' : string(vadSilenceMs)
  }
  {
    name: 'NOISE_SUPPRESSION'
    value: agentOwnsSession ? '' : (noiseSuppression ? 'true' : 'false')
  }
  {
    name: 'ECHO_CANCELLATION'
    value: agentOwnsSession ? '' : (echoCancellation ? 'true' : 'false')
  }
  {
    name: 'TRANSCRIPTION_MODEL'
    value: agentOwnsSession ? '' : transcriptionModel
  }
  {
    name: 'TRANSCRIPTION_LANGUAGE'
    value: agentOwnsSession ? '' : transcriptionLanguage
  }
  {
    name: 'INTERIM_RESPONSE'
    value: interimResponse
  }
  // audio
  {
    name: 'ACS_AUDIO_RATE'
    value: string(acsAudioRate)
  }
  {
    name: 'VOICELIVE_AUDIO_RATE'
    value: string(voiceliveAudioRate)
  }
  {
    name: 'PACING_LEAD_MS'
    value: string(pacingLeadMs)
  }
  {
    name: 'ACS_OUT_FRAME_MS'
    value: string(acsOutFrameMs)
  }
  {
    name: 'MAX_TEXT_BYTES'
    value: string(maxTextBytes)
  }
  {
    name: 'MAX_MESSAGE_BYTES'
    value: string(maxMessageBytes)
  }
  // ACS
  {
    name: 'ACS_ENDPOINT'
    value: acs.outputs.endpoint
  }
  {
    name: 'PUBLIC_BASE_URL'
    value: publicBaseUrl
  }
  // security
  {
    name: 'ACS_JWT_VALIDATION'
    value: acsJwtValidation ? 'true' : 'false'
  }
  {
    name: 'ACS_RESOURCE_ID'
    value: acs.outputs.immutableResourceId
  }
  {
    name: 'ACS_JWT_ISSUER'
    value: acsJwtIssuer
  }
  {
    name: 'ACS_OPENID_CONFIG_URL'
    value: acsOpenidConfigUrl
  }
  {
    name: 'ACS_JWKS_URL'
    value: acsJwksUrl
  }
  {
    name: 'JWT_LEEWAY_S'
    value: string(jwtLeewayS)
  }
  {
    name: 'EVENTGRID_ENTRA_TENANT_ID'
    value: eventGridEntraTenantId
  }
  {
    name: 'EVENTGRID_ENTRA_AUDIENCE'
    value: eventGridEntraAudience
  }
  {
    name: 'EVENTGRID_ENTRA_OPENID_CONFIG_URL'
    value: eventgridEntraOpenidConfigUrl
  }
  // profiles and outbound calls
  {
    name: 'PROFILES_FILE'
    value: profilesMounted ? profilesPath : profilesFile
  }
  {
    name: 'PHONE_NUMBERS'
    value: phoneNumbers
  }
  {
    name: 'OUTBOUND_ENTRA_TENANT_ID'
    value: outboundEntraTenantId
  }
  {
    name: 'OUTBOUND_ENTRA_AUDIENCE'
    value: outboundEntraAudience
  }
  {
    name: 'OUTBOUND_ENTRA_ROLE'
    value: outboundEntraRole
  }
  {
    name: 'OUTBOUND_ENTRA_OPENID_CONFIG_URL'
    value: outboundEntraOpenidConfigUrl
  }
  {
    name: 'OUTBOUND_RATE_PER_MIN'
    value: string(outboundRatePerMin)
  }
  {
    name: 'OUTBOUND_MAX_CONCURRENT'
    value: string(outboundMaxConcurrent)
  }
  {
    name: 'OUTBOUND_CONTEXT_MAX_BYTES'
    value: string(outboundContextMaxBytes)
  }
  {
    name: 'OUTBOUND_CONTEXT_MAX_KEYS'
    value: string(outboundContextMaxKeys)
  }
  // limits
  {
    name: 'MAX_BODY_BYTES'
    value: string(maxBodyBytes)
  }
  {
    name: 'MAX_MEDIA_MESSAGE_BYTES'
    value: string(maxMediaMessageBytes)
  }
  {
    name: 'MAX_CONCURRENT_CALLS'
    value: string(maxConcurrentCalls)
  }
  {
    name: 'MEDIA_IDLE_TIMEOUT_S'
    value: string(mediaIdleTimeoutS)
  }
  {
    name: 'MAX_CALL_DURATION_S'
    value: string(maxCallDurationS)
  }
  {
    name: 'DRAIN_GRACE_S'
    value: string(drainGraceS)
  }
  // many nodes (docs/deploy.md "Scale-out"); REDIS_URL, CALL_URL_KEYS and
  // SCALE_METRIC_TOKEN are in secretEnv
  {
    name: 'REDIS_AUTH'
    value: redisAuth
  }
  {
    name: 'WORKERS'
    value: string(workersPerReplica)
  }
  {
    name: 'MAX_NODES'
    value: string(maxReplicas * workersPerReplica)
  }
  {
    name: 'DRAIN_MODE'
    value: drainMode
  }
  {
    name: 'DRAIN_ROUTE_SETTLE_S'
    value: string(drainRouteSettleS)
  }
  {
    name: 'DRAIN_MIGRATE_DEADLINE_S'
    value: string(drainMigrateDeadlineS)
  }
  {
    name: 'NODE_HEARTBEAT_S'
    value: string(nodeHeartbeatS)
  }
  {
    name: 'OWNER_LOST_AFTER_S'
    value: string(ownerLostAfterS)
  }
  // service
  {
    name: 'LOG_DIR'
    value: logDir
  }
  {
    name: 'LOG_LEVEL'
    value: logLevel
  }
  {
    name: 'LOG_FORMAT'
    value: logFormat
  }
  // Not a Settings field: azure-identity's DefaultAzureCredential needs the client id
  // to pick the user-assigned identity (Voice Live with Entra ID, ACS with managed identity).
  {
    name: 'AZURE_CLIENT_ID'
    value: identity.properties.clientId
  }
]

var appEnv = concat(filter(plainEnv, e => !empty(e.value)), secretEnv)

// ============================================================== the app and its webhook

module app 'modules/containerapp.bicep' = {
  name: 'containerapp'
  params: {
    name: appName
    location: location
    tags: tags
    environmentId: containerEnv.outputs.id
    identityId: identity.id
    image: containerImage
    registryServer: empty(registryName) ? '' : '${toLower(registryName)}${az.environment().suffixes.acrLoginServer}'
    env: appEnv
    secrets: keyVaultSecrets
    secretFiles: profilesMounted
      ? [
          {
            secretRef: secretNames.profilesYaml
            path: 'profiles.yaml'
          }
        ]
      : []
    targetPort: 8000
    cpuCores: cpuCores
    memory: memory
    minReplicas: minReplicas
    maxReplicas: maxReplicas
    callsPerReplica: callsPerReplica
    scaleMetricUrl: scaleMetricUrl
    scaleMetricSecretName: secretNames.scaleMetricToken
    revisionsMode: revisionsMode
    revisionSuffix: revisionSuffix
    terminationGracePeriodSeconds: drainRouteSettleS + drainMigrateDeadlineS + drainGraceS + shutdownMarginS
  }
  dependsOn: [
    registryPull
    vault
    redis
  ]
}

// After the app: creating the subscription runs Event Grid's validation handshake.
module events 'modules/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: resourceGroup(acsResourceGroup)
  params: {
    acsName: acsName
    createSystemTopic: createEventGridSystemTopic
    systemTopicName: eventGridSystemTopicName
    subscriptionName: eventGridSubscriptionName
    tags: tags
    endpointBaseUrl: webhookUrl
    sharedSecret: eventGridSharedSecret
    entraTenantId: eventGridEntraTenantId
    entraApplicationIdOrUri: eventGridEntraAudience
  }
  dependsOn: [
    app
  ]
}

// ============================================================== outputs (no secrets)

@description('The app\'s public base URL (PUBLIC_BASE_URL).')
output appUrl string = publicBaseUrl

@description('The Event Grid webhook, without the ?secret= query (which is never output).')
output webhookUrl string = webhookUrl

@description('True when PUBLIC_BASE_URL equals the ingress FQDN Container Apps assigned.')
output publicBaseUrlMatchesIngress bool = !empty(customPublicBaseUrl) || publicBaseUrl == 'https://${app.outputs.fqdn}'

output containerAppName string = app.outputs.name
output latestRevisionName string = app.outputs.latestRevisionName
output acsName string = acs.outputs.name
output acsEndpoint string = acs.outputs.endpoint
output acsImmutableResourceId string = acs.outputs.immutableResourceId
output voiceLiveEndpoint string = empty(voiceLiveEndpoint) ? foundry.outputs.endpoint : voiceLiveEndpoint
output keyVaultName string = vault.outputs.name
output identityClientId string = identity.properties.clientId
output identityPrincipalId string = identity.properties.principalId
output eventGridSystemTopicName string = events.outputs.systemTopicName
@description('Azure Managed Redis host name (REDIS_URL = rediss://<host>:10000).')
output redisHost string = redis.outputs.hostName
@description('What the active-calls scale rule polls (bearer token required).')
output scaleMetricUrl string = scaleMetricUrl
