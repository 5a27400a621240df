// Everything environment-specific, read from process.env when a request is
// served (never at build time, so one `next build` serves every deployment
// and every test run). Only server code imports this module; the browser gets
// the two public values it needs (events endpoint, region) as props.

export interface AppConfig {
  /** The origin browsers use for this app, e.g. https://board.example.com. */
  appOrigin: string;
  region: string;
  userPoolId: string;
  userPoolClientId: string;
  /** The Cognito managed-login (Hosted UI) domain, host[:port], no scheme. */
  cognitoDomain: string;
  /** What the browser's Amplify `events` client dials: <app origin>/event. */
  eventsEndpoint: string;
  /** Where server actions POST events: the relay's HTTP publish route. */
  relayPublishUrl: string;
  /** The board's channel, in the `default` namespace. */
  channel: string;
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set (see examples/nextjs/README.md, "Configuration")`);
  }
  return value;
}

export function appConfig(): AppConfig {
  // The adapter itself reads AMPLIFY_APP_ORIGIN (createServerRunner).
  const appOrigin = required('AMPLIFY_APP_ORIGIN').replace(/\/$/, '');
  return {
    appOrigin,
    region: process.env.AWS_REGION || 'us-east-1',
    userPoolId: required('COGNITO_USER_POOL_ID'),
    userPoolClientId: required('COGNITO_USER_POOL_CLIENT_ID'),
    cognitoDomain: required('COGNITO_DOMAIN'),
    eventsEndpoint: process.env.EVENTS_ENDPOINT || `${appOrigin}/event`,
    relayPublishUrl: process.env.RELAY_PUBLISH_URL || process.env.EVENTS_ENDPOINT || `${appOrigin}/event`,
    channel: process.env.BOARD_CHANNEL || '/default/board',
  };
}
