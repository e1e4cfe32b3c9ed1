// Event Grid: the ACS resource's system topic and one subscription delivering
// `Microsoft.Communication.IncomingCall` (only) to the app's webhook.
//
// Creating the subscription makes Event Grid run its validation handshake against
// the webhook, so the app must already be up and answering (main.bicep deploys this
// module after the Container App).
//
// Only ONE system topic may exist per source resource: for an ACS resource that
// already has one (e.g. made by the portal), set create=false and pass its name.
//
// Webhook security (protocols.md §5), both optional and combinable:
//   - sharedSecret: appended as ?secret=<value> (the app's EVENTGRID_SHARED_SECRET);
//     Event Grid returns only the base URL on reads, never the query string;
//   - Entra-protected delivery: Event Grid sends a bearer token for the given app
//     (azureActiveDirectoryTenantId + azureActiveDirectoryApplicationIdOrUri).
//
// API versions: Microsoft.EventGrid/systemTopics@2022-06-15,
//               Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15 (stable).

param acsName string
param createSystemTopic bool
param systemTopicName string
param subscriptionName string
param tags object = {}

@description('https://<host>/api/incoming-call, without a query string.')
param endpointBaseUrl string

@secure()
param sharedSecret string = ''

@description('Entra tenant of the app registration that protects the webhook ("" = off).')
param entraTenantId string = ''

@description('App id or app id URI of that registration ("" = off).')
param entraApplicationIdOrUri string = ''

resource acs 'Microsoft.Communication/communicationServices@2023-04-01' existing = {
  name: acsName
}

resource createdTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (createSystemTopic) {
  name: systemTopicName
  location: 'global' // ACS is a global resource; its system topic is too
  tags: tags
  properties: {
    source: acs.id
    topicType: 'Microsoft.Communication.CommunicationServices'
  }
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource incomingCall 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: subscriptionName
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: empty(sharedSecret) ? endpointBaseUrl : '${endpointBaseUrl}?secret=${uriComponent(sharedSecret)}'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
        azureActiveDirectoryTenantId: empty(entraTenantId) ? null : entraTenantId
        azureActiveDirectoryApplicationIdOrUri: empty(entraApplicationIdOrUri) ? null : entraApplicationIdOrUri
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Communication.IncomingCall'
      ]
    }
    // A ringing call is worth answering for seconds, not hours: a few quick retries,
    // then drop (Event Grid's minimum time-to-live is one minute).
    retryPolicy: {
      maxDeliveryAttempts: 3
      eventTimeToLiveInMinutes: 1
    }
  }
  dependsOn: [
    createdTopic
  ]
}

output systemTopicName string = topic.name
output subscriptionName string = incomingCall.name
