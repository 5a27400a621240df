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
  /** The shared board's channel, in the `default` namespace: for users in
   * no team (see `boardChannel`). */
  channel: string;
}

/** One channel segment as AppSync allows it (and the relay's policy
 * matches): 1-50 of A-Z a-z 0-9, '-' inside. */
const SEGMENT = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,48}[A-Za-z0-9])?$/;

/**
 * The board a user sees: their first team's (`/default/teams/<group>/board`,
 * which the relay's channel policy opens to that Cognito group's members
 * only; see channel-policy.toml), or the shared board.
 */
export function boardChannel(c: AppConfig, groups: string[]): string {
  const team = groups.find((g) => SEGMENT.test(g));
  return team ? `/default/teams/${team}/board` : c.channel;
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
